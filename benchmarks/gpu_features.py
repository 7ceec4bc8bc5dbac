"""The features stage and one stage-1 epoch with a ViT-B-sized video backbone, on whatever device is given.

Nothing is downloaded: the backbone is VideoMAE-Base built from its default config with random weights (the
cost of a forward pass does not depend on the weights), saved and loaded through the same code as a hub
backbone. Clips are synthetic 320x426 H.264-or-MPEG-4 videos of 4 s at 25 fps, written with OpenCV (or
ffmpeg) into a scratch folder. Prints one JSON line per measurement:

    python benchmarks/gpu_features.py --clips 512 --device cuda --workers 12 --out results.jsonl
    python benchmarks/gpu_features.py --clips 16 --device cpu --workers 2

Measured: clips/s of `features` (decode in loader workers + backbone + float16 shards), peak GPU memory, the
process's peak RSS, and one align epoch (cached m, and computed on the fly as with features.cache: false).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fourtier.config.base import OptimSettings  # noqa: E402
from fourtier.data.contract import Annotation, write_dataset  # noqa: E402
from fourtier.features.cache import compute_features  # noqa: E402
from fourtier.features.source import FeatureSource, OnTheFlyFeatures  # noqa: E402
from fourtier.models.backbone import load_backbone  # noqa: E402
from fourtier.models.ftp import FTP, FTPConfig  # noqa: E402
from fourtier.train.align import train_alignment  # noqa: E402


def write_clip(path: Path, seed: int, frames: int = 100, height: int = 320, width: int = 426) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    for t in range(frames):  # a moving textured scene: realistic decode work, not a flat frame
        frame = np.roll(base, shift=(2 * t, 3 * t), axis=(0, 1))
        writer.write(frame)
    writer.release()


def make_dataset(root: Path, clips: int) -> Path:
    from concurrent.futures import ProcessPoolExecutor

    (root / "videos").mkdir(parents=True, exist_ok=True)
    paths = [root / "videos" / f"c{i:06d}.mp4" for i in range(clips)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_clip, paths, range(clips), chunksize=8))
    rows = [Annotation(f"c{i:06d}", f"videos/c{i:06d}.mp4", f"class{i % 10}", "train" if i % 10 else "val")
            for i in range(clips)]
    write_dataset(root, rows, [f"class{k}" for k in range(10)], {"kind": "benchmark"}, [])
    return root


def make_backbone(out: Path) -> Path:
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(0)
    model = VideoMAEModel(VideoMAEConfig())  # Base: 768-d, 12 layers, 16 frames at 224 px, tubelet 2, patch 16
    model.save_pretrained(out / "hf")
    (out / "config.json").write_text(json.dumps({"type": "hf", "model": "videomae-base (random weights)"}))
    return out


def peak_gpu_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--align-batch", type=int, default=128)
    parser.add_argument("--on-the-fly", action="store_true", help="also one align epoch with m computed on the fly")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []

    def report(**row):
        row = {"clips": args.clips, "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda"
               else "", "threads": torch.get_num_threads(), **row}
        print(json.dumps(row), flush=True)
        results.append(row)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        ds = make_dataset(tmp / "raw", args.clips)
        print(f"wrote {args.clips} clips in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        backbone = load_backbone(make_backbone(tmp / "backbone"))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        meta = compute_features(backbone, ds, tmp / "features", 2, 1, args.batch_size, args.workers, device)
        seconds = time.perf_counter() - start
        m_bytes = sum(p.stat().st_size for p in (tmp / "features").glob("m-*.npy"))
        report(stage="features", seconds=round(seconds, 2), clips_per_s=round(args.clips / seconds, 2),
               m_shape=meta["shape"][1:], m_gb=round(m_bytes / 2 ** 30, 3), peak_gpu_gb=round(peak_gpu_gb(), 2),
               peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
               batch_size=args.batch_size, workers=args.workers)

        source = FeatureSource(tmp / "features")
        pooled = np.random.default_rng(0).normal(size=(len(source), 4, 384)).astype(np.float16)
        settings = OptimSettings(1, args.align_batch, 1e-3, 0.05, (0.9, 0.95), 0)
        train_idx, val_idx = source.split("train"), source.split("val")
        for name, src in (("align epoch (cached m)", source),) + (
                (("align epoch (m on the fly)", OnTheFlyFeatures(ds, backbone, 2, 1, tmp / "features", device)),)
                if args.on_the_fly else ()):
            torch.manual_seed(0)
            model = FTP(FTPConfig(source.dim, source.grid, ["A", "B", "C", "D"], n_classes=1, text_dim=384))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_alignment(model, src, train_idx, val_idx, pooled, settings, 0, device=device,
                            workers=args.workers)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            report(stage=name, seconds=round(seconds, 2), clips_per_s=round(len(source) / seconds, 2),
                   peak_gpu_gb=round(peak_gpu_gb(), 2), batch_size=args.align_batch, workers=args.workers,
                   note="one epoch over the train split plus retrieval on the val split")
    if args.out:
        with open(args.out, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in results)


if __name__ == "__main__":
    main()
