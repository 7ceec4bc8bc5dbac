"""How cost grows with the corpus: SynthAct pretraining corpora of growing size through download, tile, caption,
embed, features and one epoch of align, each stage run as its own process (exactly the stage scripts that
`dvc repro` runs), in a scratch workspace with a fresh answer cache.

    python benchmarks/scale.py                       # 1000, 4000 and 16000 clips
    python benchmarks/scale.py --clips 1000 4000 16000
    python benchmarks/scale.py --clips 1000 16000 --workspace /tmp/scale --stages download tile caption features
    python benchmarks/scale.py --clips 1000 16000 --workspace /tmp/scale --stages embed align

Per stage it prints clips/s and the stage process's peak RSS (from wait4: the process and the workers it
waited for), then each size against the smallest: peak RSS (bar: at most 1.25x) and time per clip (bar: at
most 1.3x). Results are appended to benchmarks/results/scale.jsonl, which `fourtier plan` reads for its
time estimates. `--workspace` keeps the scratch workspaces (one folder per size) so that a later run with
`--stages` measures a few stages again on the outputs of the earlier ones.
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
RSS_BAR, PER_CLIP_BAR = 1.25, 1.3  # the bars: peak RSS and time per clip, largest size against smallest
# what each stage reads from the stages before it (dvc.yaml's deps), for --stages on a kept workspace
NEEDS = {"tile": "data/raw/synth-pretrain", "caption": "data/tiles/synth-pretrain",
         "embed": "data/captions/synth-pretrain", "features": "data/raw/synth-pretrain",
         "align": "data/embeddings/synth-pretrain"}


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


def measure(clips: int, root: Path, stages: list[str], fresh: bool, note: str | None = None) -> list[dict]:
    """Run `stages` in order in the workspace `root` (laid out first when `fresh`); one result row per stage."""
    cwd = workspace(root, clips) if fresh else root
    env = {**os.environ, "FOURTIER_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
    rows = []
    for stage in stages:
        if stage in NEEDS and not (cwd / NEEDS[stage]).exists():
            raise SystemExit(f"{stage} needs {cwd / NEEDS[stage]}, which is missing: measure the stages before it "
                             f"first (--stages ... {STAGES[STAGES.index(stage) - 1]}) in this --workspace")
        result = run_stage(stage, cwd, env)
        row = {"clips": clips, "stage": stage, **result, "clips_per_s": round(clips / result["seconds"], 2),
               "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), **({"note": note} if note else {})}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES,
                        help="the stages to run and measure (default: all); the others' outputs must already be in "
                             "--workspace")
    parser.add_argument("--workspace", type=Path,
                        help="keep the scratch workspaces in this folder (one per size) and reuse what is there")
    parser.add_argument("--note", help="a note kept in each result row (e.g. which code was measured)")
    args = parser.parse_args()
    stages = [s for s in STAGES if s in args.stages]  # pipeline order, whatever the order given
    if stages != STAGES and args.workspace is None:
        raise SystemExit("--stages without all the stages needs --workspace: a folder where an earlier run with "
                         "the stages before them kept its outputs")
    rows = []
    for clips in sorted(args.clips):
        if args.workspace is None:
            with tempfile.TemporaryDirectory(prefix=f"fourtier-scale-{clips}-") as tmp:
                rows += measure(clips, Path(tmp), stages, fresh=True, note=args.note)
        else:
            root = args.workspace.resolve() / str(clips)
            fresh = not (root / "params.yaml").exists()
            root.mkdir(parents=True, exist_ok=True)
            rows += measure(clips, root, stages, fresh, args.note)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    small, large = min(args.clips), max(args.clips)
    by = {(r["clips"], r["stage"]): r for r in rows}
    print(f"\n| stage | clips/s at {small} | clips/s at {large} | peak RSS MB at {small} | at {large} | RSS ratio "
          f"(bar {RSS_BAR}) | time-per-clip ratio (bar {PER_CLIP_BAR}) |\n|---|---|---|---|---|---|---|")
    for stage in stages:
        a, b = by[(small, stage)], by[(large, stage)]
        rss, per_clip = b["peak_rss_mb"] / a["peak_rss_mb"], a["clips_per_s"] / b["clips_per_s"]
        print(f"| {stage} | {a['clips_per_s']} | {b['clips_per_s']} | {a['peak_rss_mb']} | {b['peak_rss_mb']} | "
              f"{rss:.2f} {'ok' if rss <= RSS_BAR else 'OVER'} | {per_clip:.2f} {'ok' if per_clip <= PER_CLIP_BAR else 'OVER'} |")


if __name__ == "__main__":
    main()
