"""The README's headline table from the evaluate stage's metrics: top-1 per arm (mean +- sample std over seeds)
and the paired gains with their 95% intervals: FTP - baseline, FTP - random processors, FTP - shuffled captions.

    python analysis/headline.py                                    # print the table for the workspace's run
    python analysis/headline.py --save analysis/results/seeds-0-4  # and keep it: metrics and runs per target + table.md

The committed 5-seed table was made by
    dvc exp run -n seeds-0-4 -S 'finetune.seeds=[0,1,2,3,4]'
    python analysis/headline.py --save analysis/results/seeds-0-4
"""
import argparse
import json
import shutil
from pathlib import Path

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.evaluation.experiments import gain_ci

ARMS = ("baseline", "ftp", "random", "shuffled")
GAINS = (("ftp_gain_top1", "FTP - baseline", "baseline"), ("ftp_minus_random_top1", "FTP - random", "random"),
         ("ftp_minus_shuffled_top1", "FTP - shuffled", "shuffled"))


def runs_path(metrics_path: Path) -> Path:
    """Where a target's per-seed numbers sit beside its metrics: runs.json next to the evaluate stage's
    metrics.json, <target>.runs.json next to a kept <target>.json."""
    if metrics_path.name == "metrics.json":
        return metrics_path.with_name("runs.json")
    return metrics_path.with_suffix(".runs.json")


def read_runs(metrics_path: Path) -> dict:
    """{arm: {"top1": [per seed], ...}} of a target. Results kept before runs.json existed hold the lists inside
    the metrics themselves (`runs` under each summary)."""
    path = runs_path(metrics_path)
    if path.exists():
        return json.loads(path.read_text())
    metrics = json.loads(metrics_path.read_text())
    return {arm: {k: v["runs"] for k, v in m.items() if isinstance(v, dict) and "runs" in v}
            for arm, m in metrics.items() if arm in ARMS}


def pp(x: float) -> str:
    return f"{100 * x:.1f}"


def spread_cell(s: dict) -> str:
    """A summarise() dict (fractions) as "mean +- sample std" in %."""
    return f"{pp(s['mean'])} +- {pp(s['std'])}"


def gain_cell(g: dict) -> str:
    ci = gain_ci(g, 0)  # the stored interval, of either format
    return f"{100 * g['mean']:+.1f}" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")


def table(metrics: dict[str, dict], runs: dict[str, dict]) -> str:
    seeds = {len(r[a]["top1"]) for r in runs.values() for a in ARMS if a in r}
    lines = [f"Top-1 (%) on the validation clips, mean +- sample std over {'/'.join(map(str, sorted(seeds)))} seeds; "
             "gains in pp, paired by seed, with their 95% t-intervals.", "",
             "| target | " + " | ".join(ARMS) + " | " + " | ".join(name for _, name, _ in GAINS) + " |",
             "|---" * (1 + len(ARMS) + len(GAINS)) + "|"]
    for target, m in metrics.items():
        cells = [spread_cell(m[a]["top1"]) if a in m else "-" for a in ARMS]
        cells += [gain_cell(m[key]) if key in m else "-" for key, _, _ in GAINS]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    lines.append("")
    for target, r in runs.items():
        for _, name, other in GAINS:
            if "ftp" in r and other in r:
                gains = [a - b for a, b in zip(r["ftp"]["top1"], r[other]["top1"])]
                lines.append(f"- {target}, {name} per seed (pp): " + ", ".join(f"{100 * v:+.1f}" for v in gains))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", type=Path, help="folder to keep each target's metrics.json and table.md in")
    args = parser.parse_args()
    params = load_params()
    sources = {t: paths.evaluation(t) / "metrics.json" for t in params.targets}
    metrics = {t: json.loads(p.read_text()) for t, p in sources.items()}
    text = table(metrics, {t: read_runs(p) for t, p in sources.items()})
    print(text, end="")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for target, path in sources.items():
            shutil.copy(path, args.save / f"{target}.json")
            shutil.copy(runs_path(path), args.save / f"{target}.runs.json")
        (args.save / "table.md").write_text(text)


if __name__ == "__main__":
    main()
