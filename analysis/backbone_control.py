"""features -> align -> finetune -> evaluate with another backbone's weights, in a scratch workspace.

Separates what a change of code does from what a retrained backbone does: run the current stages with the
backbone committed at an earlier commit and compare its metrics with data/eval/*/metrics.json.

    python analysis/backbone_control.py bd665b4

Reads data/raw and data/embeddings from this workspace (run `dvc repro` first); writes the evaluate metrics
to analysis/results/backbone-<commit>-<dataset>.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commit", help="the commit whose models/backbone to use")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    out = REPO / "analysis" / "results"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fourtier-backbone-control-") as tmp:
        work = Path(tmp)
        shutil.copy(REPO / "params.yaml", work / "params.yaml")
        (work / "models" / "backbone").mkdir(parents=True)
        for name in ("config.json", "weights.safetensors"):
            blob = subprocess.run(["git", "show", f"{args.commit}:models/backbone/{name}"], cwd=REPO, check=True,
                                  capture_output=True).stdout
            (work / "models" / "backbone" / name).write_bytes(blob)
        for kind in ("raw", "embeddings"):
            (work / "data" / kind).mkdir(parents=True)
            for ds in params["pretrain"] + params["targets"]:
                if (REPO / "data" / kind / ds).exists():
                    os.symlink(REPO / "data" / kind / ds, work / "data" / kind / ds)
        env = {**os.environ, "FOURTIER_CACHE": str(work / "cache")}
        steps = [[ds] for ds in params["pretrain"] + params["targets"]]
        commands = [["features", *s] for s in steps] + [["align"]] + \
                   [["finetune", ds] for ds in params["targets"]] + [["evaluate", ds] for ds in params["targets"]]
        for stage, *rest in commands:
            print(f"== {stage} {' '.join(rest)}", flush=True)
            subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *rest], cwd=work, env=env, check=True)
        for ds in params["targets"]:
            shutil.copy(work / "data" / "eval" / ds / "metrics.json", out / f"backbone-{args.commit}-{ds}.json")
            print(f"wrote {out / f'backbone-{args.commit}-{ds}.json'}")


if __name__ == "__main__":
    main()
