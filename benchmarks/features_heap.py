"""The features stage's peak RSS against the number of clips, with and without giving the heap's free pages back
after every batch (fourtier.runtime.heap.release_free_heap).

    python benchmarks/features_heap.py                 (after dvc repro; about 8 minutes on 2 cores)
    python benchmarks/features_heap.py --clips 1000 8000 --workers 2

A corpus of N clips is the default run's data/raw/synth-pretrain repeated (its 600 videos listed again under new
ids, so decoding costs what a real corpus costs). Each size runs compute_features in a fresh process, with the
stage's settings (2 views, batch 64) and `--workers` decoding processes; "kept" replaces release_free_heap by
a no-op, "released" is the code as it is. Peak RSS is the process's own (getrusage; the decoding workers are
separate processes and do not grow). Appends one JSON line per run to benchmarks/results/features_heap.jsonl.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "features_heap.jsonl"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
import fourtier.features.cache as cache
from fourtier.models.backbone import load_backbone
ds, out, workers, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mode == "kept":
    cache.release_free_heap = lambda: None
torch.set_num_threads(2)
start = time.perf_counter()
cache.compute_features(load_backbone(Path("models/backbone")), ds, out, 2, 1, 64, workers)
print(json.dumps({"seconds": round(time.perf_counter() - start, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def corpus(root: Path, n: int) -> Path:
    src = REPO / "data/raw/synth-pretrain"
    if not (src / "annotations.csv").exists():
        raise SystemExit(f"{src} is missing: run `dvc repro` first")
    ds = root / f"corpus-{n}"
    ds.mkdir(parents=True)
    os.symlink(src / "videos", ds / "videos")
    shutil.copy(src / "classes.txt", ds / "classes.txt")
    with open(src / "annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(ds / "annotations.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "path", "label", "split"])
        for i in range(n):
            r = rows[i % len(rows)]
            writer.writerow([f"{r['video_id']}-{i}", r["path"], r["label"], r["split"]])
    return ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fourtier-heap-") as tmp:
        for n in args.clips:
            ds = corpus(Path(tmp), n)
            for mode in ("kept", "released"):
                out = Path(tmp) / f"features-{n}-{mode}"
                done = subprocess.run([sys.executable, "-c", CHILD, str(ds), str(out), str(args.workers), mode],
                                      cwd=REPO, capture_output=True, text=True, check=True)
                row = {"clips": n, "heap": mode, "workers": args.workers, **json.loads(done.stdout.splitlines()[-1]),
                       "date": time.strftime("%Y-%m-%d")}
                print(json.dumps(row), flush=True)
                rows.append(row)
                shutil.rmtree(out)
    with open(RESULTS, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    small, large = min(args.clips), max(args.clips)
    for mode in ("kept", "released"):
        peak = {r["clips"]: r["peak_rss_mb"] for r in rows if r["heap"] == mode}
        print(f"{mode}: peak RSS {peak[small]} MB at {small} clips, {peak[large]} MB at {large}: "
              f"{peak[large] / peak[small]:.2f}x")


if __name__ == "__main__":
    main()
