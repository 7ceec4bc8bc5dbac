"""DVC with many small files against the same bytes in a few shards: `dvc add`, `dvc status` (nothing changed)
and `dvc push` to a local remote, timed, in a scratch repository.

    python benchmarks/dvc_files.py                      # 100,000 files of 2 KB, and the same in shards of 1,000
    python benchmarks/dvc_files.py --files 10000 --size 2048

The files are what download writes for a dataset below download.shard_above (one per clip); the shards are
what it writes above it (store.ItemWriter, stored zip members). Results go to benchmarks/results/dvc_files.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from fourtier.data.store import ItemWriter  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dvc_files.jsonl"


def dvc(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def corpus(root: Path, files: int, size: int, shard_size: int, sharded: bool) -> None:
    data = root / "data"
    if sharded:
        with ItemWriter(data, files, 0, shard_size) as writer:
            for i in range(files):
                writer.put(f"clip{i:07d}.mp4", os.urandom(size))
    else:
        (data / "items").mkdir(parents=True)
        for i in range(files):
            (data / "items" / f"clip{i:07d}.mp4").write_bytes(os.urandom(size))


def measure(files: int, size: int, shard_size: int, sharded: bool, scratch: Path) -> dict:
    root = scratch / ("shards" if sharded else "files")
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(["init", "-q"], root)
    dvc(["remote", "add", "-d", "local", str(scratch / f"remote-{root.name}")], root)
    dvc(["config", "cache.type", "reflink,hardlink,symlink,copy"], root)
    corpus(root, files, size, shard_size, sharded)
    row = {"layout": "shards" if sharded else "files", "tracked_files": len(list((root / "data").rglob("*.*"))),
           "files": files, "bytes": files * size}
    row["add_s"] = round(dvc(["add", "-q", "data"], root), 2)
    row["status_s"] = round(dvc(["status", "-q"], root), 2)
    row["push_s"] = round(dvc(["push", "-q"], root), 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=2048, help="bytes per file")
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fourtier-dvc-files-"))
    try:
        rows = [measure(args.files, args.size, args.shard_size, sharded, scratch) for sharded in (False, True)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    dvc_version = subprocess.run([sys.executable, "-m", "dvc", "--version"], capture_output=True, text=True).stdout.strip()
    with open(RESULTS, "a") as fh:
        for row in rows:
            row.update(dvc=dvc_version, cpus=os.cpu_count(), machine=platform.machine(), date=time.strftime("%Y-%m-%d"))
            fh.write(json.dumps(row) + "\n")
    print(f"{args.files:,} files of {args.size:,} bytes ({args.files * args.size / 1e6:.0f} MB), DVC {dvc_version}:")
    print(f"{'layout':8} {'tracked':>8} {'add':>9} {'status':>9} {'push':>9}")
    for row in rows:
        print(f"{row['layout']:8} {row['tracked_files']:>8,} {row['add_s']:>8.1f}s {row['status_s']:>8.1f}s {row['push_s']:>8.1f}s")
    a, b = rows
    print(f"shards against files: add {a['add_s'] / b['add_s']:.0f}x, status {a['status_s'] / b['status_s']:.0f}x, "
          f"push {a['push_s'] / b['push_s']:.0f}x faster")


if __name__ == "__main__":
    main()
