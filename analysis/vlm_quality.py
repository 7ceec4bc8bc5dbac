"""VLM quality (paper Table 5): FTP's gain per VLM, from queued DVC experiments that caption with each VLM.

    dvc exp run --queue -n vlm-builtin-terse -S vlm=builtin-terse -S 'finetune.arms=[ftp]' -S 'finetune.seeds=[0,1,2]'
    dvc exp run --queue -n vlm-builtin-noisy-0.1 -S vlm=builtin-noisy -S vlms.builtin-noisy.error_rate=0.1 \\
        -S 'finetune.arms=[ftp]' -S 'finetune.seeds=[0,1,2]'          (and 0.3, 0.5)
    dvc queue start -j 1
    python analysis/vlm_quality.py vlm-builtin-terse vlm-builtin-noisy-0.1 vlm-builtin-noisy-0.3 vlm-builtin-noisy-0.5

Each experiment trains only the FTP arm: the baseline (no processors) does not depend on the VLM, so FTP of each
VLM is paired by seed with the committed run's baseline, and with the committed run's FTP (the `builtin` VLM),
seeds 0-2. The script applies each experiment to the workspace in turn (`dvc exp apply`), reads its
data/eval/<target>/runs.json, and puts the workspace back as committed (`git checkout`, `dvc checkout`).
Writes analysis/results/vlm_quality/table.md and runs.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from fourtier.evaluation.metrics import paired_gain, summarise

REPO = Path(__file__).resolve().parents[1]
SEEDS = 3


def run(*cmd: str) -> str:
    return subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout


def committed_runs(target: str) -> dict:
    return json.loads(run("git", "show", f"HEAD:data/eval/{target}/runs.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--out", type=Path, default=REPO / "analysis/results/vlm_quality")
    args = parser.parse_args()
    if run("git", "status", "--porcelain", "--untracked-files=no").strip():
        sys.exit("commit or stash your changes first: the script applies experiments to the workspace")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    targets = params["targets"]
    base = {t: committed_runs(t) for t in targets}
    rows = {"builtin": {t: base[t]["ftp"]["top1"][:SEEDS] for t in targets}}
    labels = {"builtin": "builtin (full answers; the committed run)"}
    try:
        for name in args.experiments:
            run(sys.executable, "-m", "dvc", "exp", "apply", name)
            applied = yaml.safe_load((REPO / "params.yaml").read_text())
            vlm = applied["vlm"]
            preset = applied["vlms"][vlm]
            labels[name] = vlm + (f", error rate {preset['error_rate']}" if preset.get("style") == "noisy" else "")
            rows[name] = {}
            for t in targets:
                runs = json.loads((REPO / f"data/eval/{t}/runs.json").read_text())
                assert runs["seeds"][:SEEDS] == list(range(SEEDS)), (name, runs["seeds"])
                rows[name][t] = runs["ftp"]["top1"][:SEEDS]
    finally:
        run("git", "checkout", "--", ".")
        run(sys.executable, "-m", "dvc", "checkout")
    lines = ["# python analysis/vlm_quality.py: FTP top-1 (%) per VLM, seeds 0-2, mean +- sample std; gains paired by",
             "# seed with their 95% t-interval, against the committed run's baseline and its builtin FTP", "",
             "| VLM | " + " | ".join(f"{t} FTP | {t} FTP - baseline | {t} FTP - builtin FTP" for t in targets) + " |",
             "|---|" + "---|---|---|" * len(targets)]
    for name, per_target in rows.items():
        cells = []
        for t in targets:
            ftp, baseline, builtin = per_target[t], base[t]["baseline"]["top1"][:SEEDS], rows["builtin"][t]
            s = summarise(ftp)
            cells.append(f"{100 * s['mean']:.1f} +- {100 * s['std']:.1f}")
            for other in (baseline, None if name == "builtin" else builtin):  # builtin against itself: "-"
                g = paired_gain(ftp, other) if other is not None else None
                cells.append(f"{100 * g['mean']:+.1f} [{100 * g['ci95_low']:+.1f}, {100 * g['ci95_high']:+.1f}]"
                             if g else "-")
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    (args.out / "runs.json").write_text(json.dumps({"labels": labels, "ftp_top1": rows,
                                                    "baseline_top1": {t: base[t]["baseline"]["top1"][:SEEDS]
                                                                      for t in targets}}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
