"""Each stage that splits its work, on 1 and on 2 processes (runtime.nproc_per_node), on this machine: wall time,
clips/s and the ratio. A benchmark, not a test: it prints figures and appends them to
benchmarks/results/world_size.jsonl.

It runs the stage scripts themselves (`python stages/X.py`, which re-launch under torchrun as `dvc repro` does)
in a scratch copy of the workspace, after a full `dvc repro`, with a fresh cache dir per run so nothing resumes.
On a 2-core machine one process already uses both cores (threads, decoding workers, runs side by side), so
2 processes cannot be faster here: the figure shows what the split costs (process start, rendezvous, gloo),
not what 8 GPUs gain. On a GPU node, `--device cuda --nproc 1 8` measures the latter.

    python benchmarks/world_size.py [--dataset synth-scenes] [--seeds 2] [--nproc 1 2] [--stages ...]
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
RESULTS = REPO / "benchmarks" / "results" / "world_size.jsonl"


def scratch_workspace(root: Path, dataset: str, pretrain: str) -> Path:
    """The tracked files and the inputs the measured stages read, copied (stages replace their outputs)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    for rel in (f"data/raw/{dataset}", f"data/features/{dataset}", f"data/raw/{pretrain}", f"data/features/{pretrain}",
                f"data/embeddings/{pretrain}", "models/backbone", "models/align", f"models/finetune/{dataset}"):
        if not (REPO / rel).exists():
            sys.exit(f"{rel} is missing: run `dvc repro` first")
        shutil.rmtree(root / rel, ignore_errors=True)
        shutil.copytree(REPO / rel, root / rel)
    return root


def set_params(root: Path, nproc: int, seeds: int, stage2_parallel: str, device: str) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runtime"].update(nproc_per_node=nproc, stage2_parallel=stage2_parallel, device=device)
    raw["finetune"]["seeds"] = raw["finetune"]["seeds"][:seeds]
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def clips(root: Path, dataset: str, split: str | None = None) -> int:
    splits = (root / f"data/features/{dataset}/splits.txt").read_text().split()
    return sum(1 for s in splits if split is None or s == split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synth-scenes")
    parser.add_argument("--seeds", type=int, default=2, help="finetune seeds per arm (fewer: a shorter benchmark)")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stages", nargs="+", default=["features", "align", "finetune-runs", "finetune-ddp", "evaluate"])
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    pretrain = params["pretrain"][0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fourtier-world-") as tmp:
        root = scratch_workspace(Path(tmp) / "ws", args.dataset, pretrain)
        work = {
            "features": (["stages/features.py", args.dataset], clips(root, args.dataset), "clips"),
            "align": (["stages/align.py"], clips(root, pretrain, "train") * params["align"]["epochs"], "clip-epochs"),
            "finetune-runs": (["stages/finetune.py", args.dataset], None, "clip-epochs"),
            "finetune-ddp": (["stages/finetune.py", args.dataset], None, "clip-epochs"),
            "evaluate": (["stages/evaluate.py", args.dataset], None, "clip-predictions"),
        }
        arms = len(params["finetune"]["arms"])
        runs = arms * args.seeds
        work["finetune-runs"] = (work["finetune-runs"][0], clips(root, args.dataset, "train") * params["finetune"]["epochs"] * runs,
                                 "clip-epochs")
        work["finetune-ddp"] = (work["finetune-ddp"][0], work["finetune-runs"][1], "clip-epochs")
        evaluated = len(list((root / f"models/finetune/{args.dataset}").glob("*.safetensors")))
        work["evaluate"] = (work["evaluate"][0], clips(root, args.dataset, "val") * evaluated, "clip-predictions")
        for stage in args.stages:
            command, amount, unit = work[stage]
            for nproc in args.nproc:
                set_params(root, nproc, args.seeds, "ddp" if stage == "finetune-ddp" else "runs", args.device)
                env = {**os.environ, "FOURTIER_CACHE": str(Path(tmp) / f"cache-{stage}-{nproc}")}
                start = time.perf_counter()
                done = subprocess.run([sys.executable, *command], cwd=root, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    sys.exit(f"{stage} on {nproc} processes failed:\n{done.stderr[-3000:]}")
                row = {"stage": stage, "nproc": nproc, "device": args.device, "seconds": round(seconds, 2),
                       "work": amount, "unit": unit, "per_s": round(amount / seconds, 1), "cpus": os.cpu_count(),
                       "finetune_runs": runs if stage.startswith("finetune") else None,
                       "date": time.strftime("%Y-%m-%d")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(RESULTS, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"\n| stage | work | {' | '.join(f'{n} proc. (s)' for n in args.nproc)} | ratio {args.nproc[0]}/{args.nproc[-1]} |")
    print("|---|---|" + "---|" * len(args.nproc) + "---|")
    for stage in args.stages:
        mine = {r["nproc"]: r for r in rows if r["stage"] == stage}
        ratio = mine[args.nproc[0]]["seconds"] / mine[args.nproc[-1]]["seconds"]
        print(f"| {stage} | {mine[args.nproc[0]]['work']:,} {mine[args.nproc[0]]['unit']} | "
              + " | ".join(f"{mine[n]['seconds']:.1f} ({mine[n]['per_s']:g}/s)" for n in args.nproc)
              + f" | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
