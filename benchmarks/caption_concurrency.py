"""Caption throughput at a server's concurrency limit, across chunk boundaries (issue 24): the openai backend
against the tests' local server (tests/fake_openai.py), which answers every request after a fixed latency.

The server runs in a process of its own, so that it does not share the client's interpreter lock.
"before" asks the chunks one at a time (the stage before streaming: each chunk's tail runs with idle slots);
"after" streams them through one backend run (fourtier.caption.runner.caption_chunks). The ideal is concurrency /
latency answers per second. Prints both and appends them to benchmarks/results/caption_concurrency.jsonl.

    python benchmarks/caption_concurrency.py                       # 6 chunks of 256 requests, concurrency 32, 0.2 s
    python benchmarks/caption_concurrency.py --latency 0.05        # ideal 640/s: beyond what the client's CPU drives
                                                                   # on 2 slow cores (about 300/s either way)
"""
import argparse
import io
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from fourtier.caption.backend import Request, make_backend  # noqa: E402
from fourtier.caption.runner import AnswerCache, answer_key, caption_chunks, run_captions  # noqa: E402
from fourtier.config.base import PROMPT_IDS  # noqa: E402

RESULTS = REPO / "benchmarks/results/caption_concurrency.jsonl"


def make_chunks(chunks: int, chunk_requests: int, settings: dict) -> list[list[Request]]:
    """`chunks` chunks of `chunk_requests` requests (a quarter as many tiles, four prompts each), small tiles."""
    out = []
    for c in range(chunks):
        requests = []
        for t in range(chunk_requests // len(PROMPT_IDS)):
            buf = io.BytesIO()
            pixels = np.random.default_rng(c * 100_000 + t).integers(0, 255, (32, 160, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buf, format="JPEG")
            jpeg = buf.getvalue()
            for pid in PROMPT_IDS:
                requests.append(Request(f"c{c}t{t}", pid, f"prompt {pid}", jpeg, 5,
                                        answer_key(jpeg, f"prompt {pid}", "bench", settings)))
        out.append(requests)
    return out


def serve(latency: float, pipe) -> None:
    """The fixed-latency server, in its own process: sends its URL, then its counts when told to stop."""
    with FakeOpenAI(delay=latency) as server:
        pipe.send(server.base_url)
        pipe.recv()
        pipe.send((len(server.answered), server.max_in_flight))


def measure(mode: str, chunks: list[list[Request]], concurrency: int, latency: float) -> dict:
    here, there = mp.Pipe()
    server = mp.get_context("spawn").Process(target=serve, args=(latency, there), daemon=True)
    server.start()
    base_url = here.recv()
    with tempfile.TemporaryDirectory() as tmp:
        preset = {"type": "openai", "model": "bench", "base_url": base_url, "concurrency": concurrency,
                  "timeout": 30}
        backend = make_backend("bench", {"bench": preset}, {"max_new_tokens": 16, "temperature": 0.0})
        cache = AnswerCache(Path(tmp) / "answers.sqlite")
        import openai  # noqa: F401  (imported once per run, outside the clock: a stage pays it once, not per chunk)

        start = time.perf_counter()
        if mode == "before":  # a chunk at a time: the next chunk starts when the last answer of this one is back
            for requests in chunks:
                run_captions(backend, requests, cache, 1.0)
        else:
            caption_chunks(backend, chunks, cache, 1.0)
        seconds = time.perf_counter() - start
        cache.close()
    here.send("stop")
    answered, peak = here.recv()
    server.join()
    answers = sum(len(c) for c in chunks)
    assert answered == answers, (answered, answers)
    rate = answers / seconds
    ideal = concurrency / latency
    return {"mode": mode, "answers": answers, "seconds": round(seconds, 3), "answers_per_s": round(rate, 1),
            "ideal_per_s": round(ideal, 1), "fraction_of_ideal": round(rate / ideal, 3), "peak_in_flight": peak}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--chunk-requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per answer")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    settings = {"max_tokens": 16, "temperature": 0.0, "detail": "low"}
    chunks = make_chunks(args.chunks, args.chunk_requests, settings)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    results = []
    for mode in ("before", "after"):
        result = measure(mode, chunks, args.concurrency, args.latency)
        result.update(chunks=args.chunks, chunk_requests=args.chunk_requests, concurrency=args.concurrency,
                      latency_s=args.latency, commit=commit, date=time.strftime("%Y-%m-%d %H:%M"), note=args.note)
        results.append(result)
        print(f"{mode:>6}: {result['answers']} answers in {result['seconds']:.2f} s = {result['answers_per_s']:.0f}/s, "
              f"{result['fraction_of_ideal']:.2f} of the ideal {result['ideal_per_s']:.0f}/s "
              f"({args.chunks} chunks of {args.chunk_requests}, concurrency {args.concurrency}, "
              f"latency {args.latency} s; peak {result['peak_in_flight']} in flight)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        for result in results:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
