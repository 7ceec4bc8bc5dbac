"""Two runs of the pipeline side by side, arm by arm: top-1 of each and their paired difference per seed (the same
seed gives the same classifier initialisation and batches in both runs), with its 95% t-interval.

    python analysis/compare_runs.py analysis/results/default analysis/results/paper-processor

Each argument is a folder that `python analysis/headline.py --save DIR` wrote (one <target>.json per target).
Prints a Markdown table and writes it to analysis/results/compare-<a>-<b>.md.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from fourtier.evaluation.metrics import ci95_half_width
from headline import ARMS, read_runs


def paired(a: list[float], b: list[float]) -> str:
    d = 100 * (np.asarray(b) - np.asarray(a))
    if len(d) < 2:
        return f"{d.mean():+.1f}"
    half = ci95_half_width(d.std(ddof=1), len(d))
    return f"{d.mean():+.1f} [{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    lines = [f"# python analysis/compare_runs.py {args.a} {args.b}",
             f"Top-1 (%), mean +- sample std over seeds; {args.b.name} - {args.a.name} paired by seed, with its 95% "
             "t-interval.", "",
             f"| target | arm | {args.a.name} | {args.b.name} | {args.b.name} - {args.a.name} |", "|---|---|---|---|---|"]
    for path in sorted(p for p in args.a.glob("*.json") if not p.name.endswith(".runs.json")):
        kept = json.loads(path.read_text())
        if "top1" not in kept.get("baseline", kept.get("ftp", {})):
            continue  # not a target's evaluation metrics (e.g. align_metrics.json)
        first, second = read_runs(path), read_runs(args.b / path.name)
        for arm in ARMS:
            if arm not in first or arm not in second:
                continue
            ra, rb = first[arm]["top1"], second[arm]["top1"]
            if len(ra) != len(rb):
                raise SystemExit(f"{path.stem} {arm}: {len(ra)} seeds against {len(rb)}; compare runs of the same seeds")
            cells = [f"{100 * np.mean(r):.1f} +- {100 * np.std(r, ddof=1):.1f}" for r in (ra, rb)]
            lines.append(f"| {path.stem} | {arm} | {cells[0]} | {cells[1]} | {paired(ra, rb)} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (Path("analysis/results") / f"compare-{args.a.name}-{args.b.name}.md").write_text(text)


if __name__ == "__main__":
    main()
