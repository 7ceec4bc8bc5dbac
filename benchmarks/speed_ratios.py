"""Speed claims as ratios, each pair measured in one run on the same inputs (issue: "the speed claims measured
as ratios"). Prints one line per ratio with its bar; writes nothing else.

    python benchmarks/speed_ratios.py [--testvideos DIR]   # after dvc repro (cached m and the backbone)

1. keyframe tiling (what `tile` does: K frames, tile, JPEG) against decoding every frame of the same real clips
   with ffmpeg and keeping K: bar 5x.
2. one stage-1 epoch on the cached m against the same epoch with m computed on the fly by the same backbone
   (features.cache: false): bar 10x.
3. captioning through the OpenAI-compatible backend at concurrency 8 against 1, against a local server with a
   fixed per-request latency (not a CPU-bound model server, which serialises): bar 6x.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from fourtier import paths, video  # noqa: E402
from fourtier.features import FeatureSource, OnTheFlyFeatures  # noqa: E402
from fourtier.models.backbone import load_backbone  # noqa: E402
from fourtier.models.ftp import FTP, FTPConfig  # noqa: E402
from fourtier.params import PROMPT_IDS, OptimSettings  # noqa: E402
from fourtier.tiling import tile_video  # noqa: E402
from fourtier.training import train_alignment  # noqa: E402
from fourtier.vlm import Request, make_backend  # noqa: E402

K = 5


def decode_all_then_keep_k(path: Path) -> int:
    """The naive way: every frame through ffmpeg as RGB, then K of them."""
    info = video.probe(path)
    w, h = info.main_stream.width, info.main_stream.height
    proc = video.run_ffmpeg(["-v", "error", "-i", str(path), "-an", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"])
    frames = np.frombuffer(proc.stdout, np.uint8)
    n = len(frames) // (w * h * 3)
    kept = frames[: n * w * h * 3].reshape(n, h, w, 3)[np.linspace(0, n - 1, K).astype(int)]
    return len(kept)


def tiling_ratio(clips: list[Path]) -> str:
    start = time.perf_counter()
    for path in clips:
        tile_video(path, K, 128, 90, path.stem)
    tiled = time.perf_counter() - start
    start = time.perf_counter()
    for path in clips:
        decode_all_then_keep_k(path)
    full = time.perf_counter() - start
    return (f"1. tiling K={K} vs decoding every frame, {len(clips)} real clips: {full:.2f} s / {tiled:.2f} s = "
            f"{full / tiled:.1f}x (bar 5x)")


def epoch_ratio(n_clips: int) -> str:
    corpus = "synth-pretrain"
    cached = FeatureSource(paths.features(corpus))
    backbone = load_backbone(paths.BACKBONE)
    fly = OnTheFlyFeatures(paths.raw(corpus), backbone, cached.meta["temporal_views"], cached.meta["spatial_views"],
                           feature_dir=paths.features(corpus))
    idx = cached.split("train")[:n_clips]
    val = np.nonzero(cached.splits != "train")[0][:32]
    pooled = np.random.default_rng(0).normal(size=(len(cached), 4, 384)).astype(np.float16)
    seconds = {}
    for name, source in (("cached", cached), ("on the fly", fly)):
        torch.manual_seed(0)
        model = FTP(FTPConfig(cached.dim, cached.grid, list(PROMPT_IDS), n_classes=1, text_dim=384))
        start = time.perf_counter()
        train_alignment(model, source, idx, val, pooled, OptimSettings(1, 64, 1e-3, 0.05, (0.9, 0.95), 0), 0)
        seconds[name] = time.perf_counter() - start
    return (f"2. one stage-1 epoch on {len(idx)} clips (+ retrieval on {len(val)}), m on the fly vs cached: "
            f"{seconds['on the fly']:.1f} s / {seconds['cached']:.1f} s = "
            f"{seconds['on the fly'] / seconds['cached']:.1f}x (bar 10x)")


def concurrency_ratio(n_requests: int, latency: float) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (5 * 96, 128), (90, 140, 60)).save(buf, "JPEG")  # a tile-sized image; the server ignores it
    jpeg = buf.getvalue()
    reqs = [Request(f"v{i}", "A", "What is the action category?", jpeg, K, f"key{i}") for i in range(n_requests)]
    rates = {}
    with FakeOpenAI(delay=latency) as server:
        os.environ.setdefault("OPENAI_API_KEY", "sk-local-benchmark")
        for concurrency in (1, 8):
            preset = {"type": "openai", "model": "fake", "base_url": server.base_url, "concurrency": concurrency,
                      "timeout": 60}
            backend = make_backend("local", {"local": preset}, {"max_new_tokens": 16, "temperature": 0.0})
            start = time.perf_counter()
            backend.run(reqs, lambda r, rec: None)
            rates[concurrency] = n_requests / (time.perf_counter() - start)
    return (f"3. captioning at concurrency 8 vs 1, {n_requests} requests, {1000 * latency:.0f} ms per request: "
            f"{rates[8]:.1f} / {rates[1]:.1f} answers/s = {rates[8] / rates[1]:.1f}x (bar 6x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testvideos", type=Path,
                        default=Path(os.environ.get("FOURTIER_TESTVIDEOS", REPO.parent / "shared" / "testvideos")))
    parser.add_argument("--clips", type=int, default=512, help="stage-1 epoch size for ratio 2")
    args = parser.parse_args()
    torch.set_num_threads(2)
    readable = [p for p in sorted(args.testvideos.glob("*")) if p.suffix != ".md"
                and not p.name.startswith(("decord_corrupted", "mediabunny"))]
    print(tiling_ratio(readable), flush=True)
    print(epoch_ratio(args.clips), flush=True)
    print(concurrency_ratio(48, 0.25), flush=True)


if __name__ == "__main__":
    main()
