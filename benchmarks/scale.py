"""How cost grows with the corpus: SynthAct pretraining corpora of growing size through download, tile, caption,
embed, features and one epoch of align, each stage run as its own process (exactly the stage scripts that
`dvc repro` runs), in a scratch workspace with a fresh answer cache.

    python benchmarks/scale.py                       # 1000, 4000 and 16000 clips
    python benchmarks/scale.py --clips 1000 4000 16000

Per stage it prints clips/s and the stage process's peak RSS (from wait4: the process and the workers it
waited for), then each size against the smallest: peak RSS (bar: at most 1.5x) and time per clip (bar: at
most 1.3x). Results are appended to benchmarks/results/scale.jsonl, which `fourtier plan` reads for its
time estimates.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ["download", "tile", "caption", "embed", "features", "align"]
RESULTS = REPO / "benchmarks" / "results" / "scale.jsonl"


def workspace(root: Path, clips: int) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"]["synth-pretrain"]["clips"] = clips
    params["pretrain"] = ["synth-pretrain"]
    params["align"]["epochs"] = 1
    params["finetune"]["arms"] = ["ftp"]  # align trains the real-caption processors only
    params["runtime"]["device"] = "cpu"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(REPO / "models" / "backbone", root / "models" / "backbone")
    return root


def run_stage(stage: str, cwd: Path, env: dict) -> dict:
    cmd = [sys.executable, str(REPO / "stages" / f"{stage}.py")] + ([] if stage == "align" else ["synth-pretrain"])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{stage} failed:\n{output.decode(errors='replace')[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, nargs="+", default=[1000, 4000, 16000])
    args = parser.parse_args()
    rows = []
    for clips in sorted(args.clips):
        with tempfile.TemporaryDirectory(prefix=f"fourtier-scale-{clips}-") as tmp:
            cwd = workspace(Path(tmp), clips)
            env = {**os.environ, "FOURTIER_CACHE": str(Path(tmp) / "cache"), "PYTHONUNBUFFERED": "1"}
            for stage in STAGES:
                result = run_stage(stage, cwd, env)
                row = {"clips": clips, "stage": stage, **result, "clips_per_s": round(clips / result["seconds"], 2),
                       "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
                print(json.dumps(row), flush=True)
                rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    small, large = min(args.clips), max(args.clips)
    by = {(r["clips"], r["stage"]): r for r in rows}
    print(f"\n| stage | clips/s at {small} | clips/s at {large} | peak RSS MB at {small} | at {large} | RSS ratio "
          f"(bar 1.5) | time-per-clip ratio (bar 1.3) |\n|---|---|---|---|---|---|---|")
    for stage in STAGES:
        a, b = by[(small, stage)], by[(large, stage)]
        rss, per_clip = b["peak_rss_mb"] / a["peak_rss_mb"], a["clips_per_s"] / b["clips_per_s"]
        print(f"| {stage} | {a['clips_per_s']} | {b['clips_per_s']} | {a['peak_rss_mb']} | {b['peak_rss_mb']} | "
              f"{rss:.2f} {'ok' if rss <= 1.5 else 'OVER'} | {per_clip:.2f} {'ok' if per_clip <= 1.3 else 'OVER'} |")


if __name__ == "__main__":
    main()
