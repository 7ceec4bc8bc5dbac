"""The cost of one stage-1 (align) epoch for each processor and objective, at growing numbers of clips.

Nothing is downloaded or decoded: m is random float16 at a ViT-B size (8 x 14 x 14 x 768 by default, one view)
in the features stage's own sharded cache, and the token-level e_i are random float16 in the embed stage's
memory-mapped layout, with each prompt's answer length drawn around the medians `embed` measured on the
default data (A 12, B 31, C 108, D 28 tokens; `data/embeddings/meta.json`). The cost does not depend on the
values. Prints one JSON line per measurement:

    python benchmarks/stage1_cost.py --clips 1024 2048 --device cuda --out benchmarks/results/stage1_cost_h100.jsonl
    python benchmarks/stage1_cost.py --clips 64 128 --device cpu --dim 96 --grid 4 7 7   # a quick look on a laptop

Measured per (clips, processor, objective): seconds for one epoch over the train split plus retrieval on the
val split (what `train_alignment` does), clips/s, peak GPU memory, and for objective `tokens` the seconds spent
reading token e_i from the memory map (`TokenTargets.batch`, on the training loop's own thread).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fourtier.config.base import OptimSettings, PROMPT_IDS  # noqa: E402
from fourtier.data.shards import ShardedArray, rows_per_shard  # noqa: E402
from fourtier.features.source import FeatureSource  # noqa: E402
from fourtier.models.ftp import FTP, FTPConfig  # noqa: E402
from fourtier.train.align import train_alignment  # noqa: E402
from fourtier.train.targets import TokenTargets  # noqa: E402

MEDIAN_TOKENS = {"A": 12, "B": 31, "C": 108, "D": 28}  # data/embeddings/meta.json of the default run


def write_features(root: Path, clips: int, grid: tuple[int, int, int], dim: int, seed: int = 0) -> Path:
    """A feature cache of random m that FeatureSource opens like the features stage's own."""
    root.mkdir(parents=True)
    row_shape = (*grid, dim)
    store = ShardedArray(root, "m", clips, row_shape, np.float16,
                         rows_per_shard(int(np.prod(row_shape)) * 2, 256))
    store.create()
    rng = np.random.default_rng(seed)
    for start in range(0, clips, 64):  # bounded memory whatever the number of clips
        n = min(64, clips - start)
        store.write(start, rng.standard_normal((n, *row_shape), dtype=np.float32))
    store.sync()
    store.close()
    (root / "meta.json").write_text(json.dumps({"dataset": "benchmark", "shape": [clips, 1, *row_shape],
                                                "classes": ["c0"], "cache": True}))
    (root / "videos.txt").write_text("\n".join(f"c{i:07d}" for i in range(clips)) + "\n")
    (root / "labels.txt").write_text("0\n" * clips)
    (root / "splits.txt").write_text("".join("val\n" if i % 10 == 0 else "train\n" for i in range(clips)))
    (root / "rows.txt").write_text("\n".join(map(str, range(clips))) + "\n")
    return root


def write_tokens(root: Path, clips: int, max_tokens: int, text_dim: int, seed: int = 0):
    """Token e_i (clips, 4, max_tokens, text_dim) and mask, memory-mapped as the embed stage writes them."""
    rng = np.random.default_rng(seed)
    tokens = np.lib.format.open_memmap(root / "tokens.npy", "w+", np.float16, (clips, 4, max_tokens, text_dim))
    mask = np.lib.format.open_memmap(root / "mask.npy", "w+", np.bool_, (clips, 4, max_tokens))
    medians = np.array([MEDIAN_TOKENS[p] for p in PROMPT_IDS])
    for start in range(0, clips, 256):
        n = min(256, clips - start)
        tokens[start:start + n] = rng.standard_normal((n, 4, max_tokens, text_dim), dtype=np.float32)
        lengths = np.clip(np.rint(medians * rng.lognormal(0, 0.3, (n, 4))), 1, max_tokens).astype(int)
        mask[start:start + n] = np.arange(max_tokens) < lengths[..., None]
    tokens.flush(), mask.flush()
    return np.load(root / "tokens.npy", mmap_mode="r"), np.load(root / "mask.npy", mmap_mode="r")


class TimedTokens(TokenTargets):
    """TokenTargets that adds up the seconds its reads take."""

    seconds = 0.0

    def batch(self, idx, col, device):
        start = time.perf_counter()
        out = super().batch(idx, col, device)
        self.seconds += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dim", type=int, default=768, help="D of m (ViT-B: 768)")
    parser.add_argument("--grid", type=int, nargs=3, default=[8, 14, 14], help="T' h w of m")
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--max-tokens", type=int, default=160, help="embed.max_tokens: whole answers")
    parser.add_argument("--batch-size", type=int, default=128, help="align.batch_size (default run: 128)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--processors", nargs="+", default=["attention", "paper"])
    parser.add_argument("--objectives", nargs="+", default=["pooled", "tokens"])
    parser.add_argument("--code", default="", help="what the measured code is (kept in every row)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    settings = OptimSettings(1, args.batch_size, 1e-3, 0.05, (0.9, 0.95), 0)  # one epoch
    rows = []
    for clips in args.clips:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            start = time.perf_counter()
            source = FeatureSource(write_features(tmp / "features", clips, tuple(args.grid), args.dim))
            tokens, mask = write_tokens(tmp, clips, args.max_tokens, args.text_dim)
            pooled = np.random.default_rng(1).standard_normal((clips, 4, args.text_dim)).astype(np.float16)
            print(f"wrote {clips} clips of m and token e_i in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            train_idx, val_idx = source.split("train"), source.split("val")
            if not rows:  # untimed: CUDA's and the kernels' first-call set-up would land on the first row
                train_alignment(FTP(FTPConfig(source.dim, source.grid, PROMPT_IDS, 1, args.text_dim)), source,
                                train_idx[:2 * args.batch_size], val_idx, pooled, settings, 0, device=device)
            for processor in args.processors:
                for objective in args.objectives:
                    torch.manual_seed(0)
                    model = FTP(FTPConfig(source.dim, source.grid, PROMPT_IDS, 1, args.text_dim, processor, objective))
                    targets = TimedTokens(tokens, mask, np.arange(clips)) if objective == "tokens" else None
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    train_alignment(model, source, train_idx, val_idx, pooled, settings, 0, device=device,
                                    workers=args.workers, tokens=targets)
                    if cuda:
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                    row = {"clips": clips, "device": str(device),
                           "gpu": torch.cuda.get_device_name() if cuda else "", "threads": torch.get_num_threads(),
                           "processor": processor, "objective": objective, "batch_size": args.batch_size,
                           "m_shape": [*args.grid, args.dim], "max_tokens": args.max_tokens,
                           "seconds": round(seconds, 2), "clips_per_s": round(clips / seconds, 1),
                           "token_read_s": round(targets.seconds, 2) if targets else 0.0,
                           "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else 0.0,
                           "note": "one epoch over the train split (90%) plus retrieval on the val split (10%)",
                           "code": args.code}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if args.out:
        with open(args.out, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
