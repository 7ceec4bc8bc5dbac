"""A stage's memory over time: the RSS of its main process and of each child (decoding workers), sampled every
second, on a workspace that benchmarks/scale.py kept (--workspace).

    python benchmarks/rss_trace.py /tmp/scale/16000 features
    python benchmarks/rss_trace.py /tmp/scale/16000 tile --out benchmarks/results/rss_trace-tile-16000.txt

A peak that `wait4` reports (benchmarks/scale.py) is one moment; this shows whether memory grows through the run
(data held, or a library's memory that grows with the clips decoded) or only swings batch to batch.
Prints about 15 evenly spaced samples (seconds, main RSS MB, main USS MB, each child's RSS MB) and the peaks.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path, help="a size's folder of a kept benchmarks/scale.py workspace")
    parser.add_argument("stage", choices=["tile", "caption", "embed", "features"])
    parser.add_argument("--dataset", default="synth-pretrain")
    parser.add_argument("--out", type=Path, help="also write the printed lines here")
    args = parser.parse_args()
    env = {**os.environ, "FOURTIER_CACHE": str(args.workspace / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "stages" / f"{args.stage}.py"), args.dataset],
                            cwd=args.workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    main_proc = psutil.Process(proc.pid)
    samples, start = [], time.time()
    while proc.poll() is None:
        try:
            info = main_proc.memory_full_info()
            kids = [c.memory_info().rss >> 20 for c in main_proc.children(recursive=True)]
        except psutil.Error:
            break
        samples.append((round(time.time() - start), info.rss >> 20, info.uss >> 20, kids))
        time.sleep(1)
    lines = [f"python benchmarks/rss_trace.py {args.workspace} {args.stage}: seconds, main RSS MB, main USS MB, "
             "children RSS MB"]
    lines += [str(s) for s in samples[::max(1, len(samples) // 15)] + samples[-1:]]
    lines.append(f"peak main {max((s[1] for s in samples), default=0)} MB, peak child "
                 f"{max((k for s in samples for k in s[3]), default=0)} MB, exit code {proc.wait()}")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
