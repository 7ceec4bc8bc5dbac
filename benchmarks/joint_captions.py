"""Joint mode (the four prompts in one request per tile) against the paper's four separate requests, per video:
requests, image and input tokens, wall time, how often the joint reply parses, and whether the answers differ.

    python benchmarks/joint_captions.py [--videos N]   # needs the default data (dvc repro) for real tiles

1. the builtin describer on the first N pretraining tiles (default 4,000: the whole corpus), each mode with a
   fresh answer cache; its answers are compared, prompt by prompt, with what the separate mode says.
2. the openai backend against a local `transformers serve` of a tiny LLaVA built offline (random weights: its
   replies are not language, so this measures the mechanics and the fallback, not a real model's parse rate),
   concurrency 8, on 16 tiles: requests and the server's own token counts per video, wall time per video.
3. image tokens per video by OpenAI's published rule for GPT-4o-class models (the backend's estimate), at
   detail low and high, for the default 5 x 128 px tile.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fourtier import paths  # noqa: E402
from fourtier.caption.backend import Request, make_backend  # noqa: E402
from fourtier.caption.runner import AnswerCache, answer_key, joint_requests, run_captions, write_captions  # noqa: E402
from fourtier.config.base import PROMPT_IDS, load_params  # noqa: E402
from fourtier.data.store import ItemReader  # noqa: E402
from fourtier.video.tiling import read_tile_index  # noqa: E402
from tiny_vlm import build_tiny_llava, transformers_serve  # noqa: E402

TILES = REPO / paths.tiles("synth-pretrain")


def tile_requests(n_videos: int, prompts: dict, model_id: str, settings: dict) -> list[Request]:
    rows = [r for r in read_tile_index(TILES) if r["status"] == "ok"][:n_videos]
    reader = ItemReader(TILES)
    out = []
    for r in rows:
        jpeg = reader.get(r["location"])
        out += [Request(r["video_id"], p, prompts[p], jpeg, 5, answer_key(jpeg, prompts[p], model_id, settings))
                for p in PROMPT_IDS]
    reader.close()
    return out


def caption(backend, prompts: dict, n_videos: int, cache_dir: Path) -> tuple[dict, dict, dict, float]:
    """Caption n_videos tiles from an empty cache: (stats, totals, answers by (video, prompt), seconds)."""
    requests = tile_requests(n_videos, prompts, backend.model_id, backend.settings)
    cache = AnswerCache(cache_dir / "answers.sqlite")
    start = time.perf_counter()
    stats = run_captions(backend, requests, cache, 1.0)
    seconds = time.perf_counter() - start
    totals = write_captions(cache_dir / "out", requests, cache, "bench", backend.model_id, backend.settings)
    records = cache.get_many([r.key for r in requests])
    answers = {(r.video_id, r.prompt_id): records[r.key]["answer"] for r in requests if r.key in records}
    cache.close()
    return stats, totals, answers, seconds


def builtin(prompts: dict, n_videos: int, workers: int) -> None:
    results = {}
    for joint in (False, True):
        backend = make_backend("b", {"b": {"type": "builtin", "joint": joint}}, {"max_new_tokens": 200,
                                                                                 "temperature": 0.0}, workers)
        with tempfile.TemporaryDirectory() as tmp:
            results[joint] = caption(backend, prompts, n_videos, Path(tmp))
    (_, _, separate, t_sep), (stats, _, joint, t_joint) = results[False], results[True]
    same = sum(separate[k] == joint.get(k) for k in separate)
    print(f"1. builtin, {n_videos} tiles, {workers} workers: separate 4 requests per video, {1000 * t_sep / n_videos:.1f} "
          f"ms per video; joint {stats['joint_requests'] / n_videos:.2f} requests per video, "
          f"{1000 * t_joint / n_videos:.1f} ms per video; joint replies parsed {stats['joint_parsed']} of "
          f"{stats['joint_requests']}; answers identical to the separate mode's: {same} of {len(separate)}", flush=True)


def served(prompts: dict, n_videos: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            transformers_serve(build_tiny_llava(Path(tmp) / "tiny"), Path(tmp) / "serve") as base_url:
        os.environ.setdefault("OPENAI_API_KEY", "sk-local-benchmark")
        for joint in (False, True):
            preset = {"type": "openai", "model": str(Path(tmp) / "tiny"), "base_url": base_url, "concurrency": 8,
                      "timeout": 120, "joint": joint}
            backend = make_backend("local", {"local": preset}, {"max_new_tokens": 16, "temperature": 0.0})
            with tempfile.TemporaryDirectory() as cache_dir:
                stats, totals, _, seconds = caption(backend, prompts, n_videos, Path(cache_dir))
            requests = stats.get("joint_requests", 0) + stats["called"] - 4 * stats.get("joint_parsed", 0)
            name = "joint" if joint else "separate"
            parsed = (f"; joint replies parsed {stats['joint_parsed']} of {stats['joint_requests']}, "
                      f"{totals['joint_fallback']} answers asked separately after one that did not") if joint else ""
            print(f"2. openai -> transformers serve (tiny LLaVA), {name}: {requests / n_videos:.2f} requests, "
                  f"{totals['input_tokens'] / n_videos:.0f} input tokens (server's count), "
                  f"{1000 * seconds / n_videos:.0f} ms per video{parsed}", flush=True)


def image_tokens(prompts: dict) -> None:
    requests = tile_requests(1, prompts, "gpt-4o", {})
    for detail in ("low", "high"):
        backend = make_backend("g", {"g": {"type": "openai", "model": "gpt-4o", "base_url": "http://127.0.0.1:9/v1",
                                           "detail": detail}}, {"max_new_tokens": 200, "temperature": 0.0})
        separate = backend.estimate(requests)["input_tokens"]
        joint = backend.estimate(joint_requests(requests)[0])["input_tokens"]
        print(f"3. GPT-4o-class input tokens per video (estimate), detail {detail}: separate {separate}, "
              f"joint {joint} ({separate / joint:.1f}x fewer)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4000, help="tiles for the builtin comparison")
    parser.add_argument("--served-videos", type=int, default=16)
    args = parser.parse_args()
    params = load_params()
    prompts = params.caption.prompts
    builtin(prompts, args.videos, params.workers)
    served(prompts, args.served_videos)
    image_tokens(prompts)


if __name__ == "__main__":
    main()
