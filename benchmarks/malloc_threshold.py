"""Why `features` peaks higher on a larger corpus: its peak RSS over time under glibc's default malloc and with
fixed mmap thresholds (`MALLOC_MMAP_THRESHOLD_`, which also turns off glibc's dynamic threshold).

    python benchmarks/scale.py --clips 4000 --workspace /tmp/scale --stages download   # a corpus, once
    python benchmarks/malloc_threshold.py /tmp/scale/4000                               # 3 runs of features

Samples the stage process's RSS every 2 s from /proc (the main process: decoding workers are separate
processes of constant size) and appends one row per threshold to benchmarks/results/malloc_threshold.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "malloc_threshold.jsonl"


def rss_mb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                return int(line.split()[1]) // 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def run(workspace: Path, threshold: int | None) -> dict:
    for stale in (workspace / "data" / "features" / "synth-pretrain", workspace / "data" / "features" / ".synth-pretrain.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    env = {**os.environ, "FOURTIER_CACHE": str(workspace / "cache")}
    if threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "stages" / "features.py"), "synth-pretrain"], cwd=workspace,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    series = []
    while proc.poll() is None:
        value = rss_mb(proc.pid)
        if value is not None:
            series.append(value)
        time.sleep(2)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"features failed (exit {proc.returncode}) in {workspace}")
    clips = sum(1 for _ in open(workspace / "data" / "features" / "synth-pretrain" / "videos.txt"))
    quarter = max(1, len(series) // 4)
    return {"threshold": threshold or "glibc default (dynamic)", "clips": clips, "seconds": round(seconds, 1),
            "clips_per_s": round(clips / seconds, 1), "peak_rss_mb": max(series),
            "rss_first_quarter_max_mb": max(series[:quarter]), "rss_last_quarter_max_mb": max(series[-quarter:]),
            "series_mb": series, "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path, help="a benchmarks/scale.py workspace whose download has run")
    parser.add_argument("--thresholds", type=int, nargs="+", default=[0, 1 << 20, 4 << 20],
                        help="bytes; 0 is glibc's default")
    args = parser.parse_args()
    rows = [run(args.workspace.resolve(), t or None) for t in args.thresholds]
    with open(RESULTS, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    for r in rows:
        print(f"{str(r['threshold']):>26}: {r['clips_per_s']} clips/s, peak RSS {r['peak_rss_mb']} MB "
              f"(first quarter {r['rss_first_quarter_max_mb']}, last quarter {r['rss_last_quarter_max_mb']})")


if __name__ == "__main__":
    main()
