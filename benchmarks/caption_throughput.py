"""Captioning and embedding throughput: builtin describer, openai backend against a local
`transformers serve` (tiny LLaVA built offline) at concurrency 1 and 8, and the MiniLM encoder.

    python benchmarks/caption_throughput.py      # needs the default data (dvc repro) for real tiles
"""
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fourtier import paths  # noqa: E402
from fourtier.caption.backend import Request, make_backend  # noqa: E402
from fourtier.caption.runner import answer_key  # noqa: E402
from fourtier.config.base import PROMPT_IDS  # noqa: E402
from fourtier.data.store import ItemReader  # noqa: E402
from fourtier.video.tiling import read_tile_index  # noqa: E402
from tiny_vlm import build_tiny_llava, transformers_serve  # noqa: E402

TILES = REPO / paths.tiles("synth-pretrain")
PROMPTS = {"A": "What is the action category?", "B": "Describe the action components in the image",
           "C": "Describe the action in the image in detail", "D": "Describe the context information"}


def requests(n_videos: int) -> list[Request]:
    rows = [r for r in read_tile_index(TILES) if r["status"] == "ok"][:n_videos]
    reader = ItemReader(TILES)
    out = []
    for r in rows:
        jpeg = reader.get(r["location"])
        out += [Request(r["video_id"], p, PROMPTS[p], jpeg, 5, answer_key(jpeg, PROMPTS[p], "x", {})) for p in PROMPT_IDS]
    return out


def timed(backend, reqs) -> float:
    start = time.perf_counter()
    backend.run(reqs, lambda r, rec: None)
    return len(reqs) / (time.perf_counter() - start)


def main():
    reqs = requests(100)
    for workers in (1, 2):
        rate = timed(make_backend("builtin", {"builtin": {"type": "builtin"}}, {}, workers), reqs)
        print(f"builtin, {workers} worker(s): {rate:.0f} answers/s")
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_llava(Path(tmp) / "tiny")
        with transformers_serve(model, Path(tmp) / "serve") as base_url:
            gen = {"max_new_tokens": 16, "temperature": 0.0}
            for concurrency in (1, 8):
                preset = {"type": "openai", "model": str(model), "base_url": base_url, "concurrency": concurrency,
                          "timeout": 60}
                rate = timed(make_backend("local", {"local": preset}, gen), reqs[:96])
                print(f"openai backend -> transformers serve (tiny LLaVA), concurrency {concurrency}: {rate:.1f} answers/s")
    from fourtier.text.encoder import make_encoder

    encoder = make_encoder("minilm", {"minilm": {"type": "minilm"}})
    from fourtier.caption.backend import decode_tile
    from fourtier.caption.builtin import describe

    texts = []
    for r in reqs[::4][:64]:
        texts += list(describe(decode_tile(r.tile_jpeg), 5, PROMPT_IDS).values())
    import torch

    torch.set_num_threads(2)
    start = time.perf_counter()
    for i in range(0, len(texts), 64):
        encoder.encode(texts[i:i + 64])
    print(f"minilm embedding: {len(texts) / (time.perf_counter() - start):.0f} texts/s (2 threads, batch 64)")


if __name__ == "__main__":
    main()
