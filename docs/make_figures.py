"""The docs' figures, drawn from committed result files only (nothing is run or measured here):

- docs/figures/ftp_gains.svg: FTP's paired top-1 gains with their 95% intervals, per target, over the baseline
  and both controls; the default run (data/eval/<target>/metrics.json) and the reference configuration's 5-seed
  run (analysis/results/seeds-0-4/<target>.json);
- docs/figures/fewshot.svg: few-shot top-1 against k per arm (analysis/results/fewshot/fewshot.csv), with the
  reference default run's full-data point (25 clips per class, the `main` row of
  analysis/results/fewshot/exp_show.json);
- docs/figures/scale_memory.svg: peak RSS per stage against corpus size, and the 16,000 / 1,000 ratio against the
  1.25 bar (benchmarks/results/scale.jsonl);
- docs/figures/stage1_cost_h100.svg: seconds per stage-1 epoch on one H100 per processor and objective
  (benchmarks/results/stage1_cost_h100.jsonl, the rows of the current code).

    python docs/make_figures.py            # rewrite the figures
    python docs/make_figures.py --check    # exit 1 if a committed figure differs from what this draws

The SVGs carry no date and fixed element ids, so the same inputs give the same bytes (with the pinned matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "figures"
TARGETS = ("synth-scenes", "synth-motion")
ARMS = ("baseline", "ftp", "random", "shuffled")
ARM_LABEL = {"baseline": "baseline", "ftp": "FTP", "random": "random processors", "shuffled": "shuffled captions"}
ARM_STYLE = {"baseline": ("k", "o"), "ftp": ("C3", "s"), "random": ("C0", "^"), "shuffled": ("C2", "v")}
SOURCES = {
    "ftp_gains.svg": ["data/eval/synth-scenes/metrics.json", "data/eval/synth-motion/metrics.json",
                      "analysis/results/seeds-0-4/synth-scenes.json", "analysis/results/seeds-0-4/synth-motion.json"],
    "fewshot.svg": ["analysis/results/fewshot/fewshot.csv", "analysis/results/fewshot/exp_show.json"],
    "scale_memory.svg": ["benchmarks/results/scale.jsonl"],
    "stage1_cost_h100.svg": ["benchmarks/results/stage1_cost_h100.jsonl"],
}


def _json(rel: str):
    return json.loads((REPO / rel).read_text())


def _interval(gain: dict) -> tuple[float, float, float]:
    """(mean, low, high) in pp: evaluate writes ci95_low / ci95_high, older kept runs a ci95 pair."""
    low, high = (gain["ci95_low"], gain["ci95_high"]) if "ci95_low" in gain else gain["ci95"]
    return 100 * gain["mean"], 100 * low, 100 * high


def ftp_gains(ax_pair) -> None:
    runs = [("default run (5 seeds)", "data/eval/{}/metrics.json"),
            ("reference configuration (5 seeds)", "analysis/results/seeds-0-4/{}.json")]
    comparisons = [("ftp_gain_top1", "FTP - baseline"), ("ftp_minus_random_top1", "FTP - random"),
                   ("ftp_minus_shuffled_top1", "FTP - shuffled")]
    for ax, (title, pattern) in zip(ax_pair, runs):
        for t, target in enumerate(TARGETS):
            metrics = _json(pattern.format(target))
            for c, (key, label) in enumerate(comparisons):
                mean, low, high = _interval(metrics[key])
                y = t * (len(comparisons) + 1) + c
                ax.errorbar([mean], [y], xerr=[[mean - low], [high - mean]], fmt="o", color=f"C{c}", capsize=3,
                            label=label if t == 0 else None)
        ticks = [t * (len(comparisons) + 1) + 1 for t in range(len(TARGETS))]
        ax.set_yticks(ticks, TARGETS)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("top-1 gain (pp), paired by seed, 95% interval")
        ax.set_title(title, fontsize=10)
    ax_pair[0].legend(fontsize=8, loc="lower right")


def fewshot(ax_pair) -> None:
    rows = list(csv.DictReader(io.StringIO((REPO / "analysis/results/fewshot/fewshot.csv").read_text())))
    full = next(r for r in _json("analysis/results/fewshot/exp_show.json") if r.get("name") == "main")["data"]["metrics"]
    for ax, target in zip(ax_pair, TARGETS):
        for arm in ARMS:
            points = sorted((int(r["shots"]), float(r["top1"]), float(r["top1_std"]))
                            for r in rows if r["dataset"] == target and r["arm"] == arm)
            top1 = full[f"data/eval/{target}/metrics.json"]["data"][arm]["top1"]
            points.append((25, 100 * top1["mean"], 100 * top1["std"]))
            color, marker = ARM_STYLE[arm]
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], color=color,
                        marker=marker, capsize=2, label=ARM_LABEL[arm])
        ax.set_xscale("log", base=2)
        ax.set_xticks([2, 4, 8, 16, 25], ["2", "4", "8", "16", "25 (all)"])
        ax.set_xlabel("labelled training clips per class (k)")
        ax.set_title(target, fontsize=10)
        ax.grid(alpha=0.3)
    ax_pair[0].set_ylabel("top-1 (%), mean +- std over 3 seeds")
    ax_pair[1].legend(fontsize=8, loc="lower right")


def scale_memory(ax_pair) -> None:
    rows = [json.loads(line) for line in (REPO / "benchmarks/results/scale.jsonl").read_text().splitlines() if line]
    first = [r for r in rows if "note" not in r]  # the first table: 1,000, 4,000 and 16,000 clips
    ax = ax_pair[0]
    stages = list(dict.fromkeys(r["stage"] for r in first))
    for s, stage in enumerate(stages):
        points = sorted((r["clips"], r["peak_rss_mb"]) for r in first if r["stage"] == stage)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{s}", label=stage)
    ax.set_xscale("log")
    ax.set_xticks([1000, 4000, 16000], ["1,000", "4,000", "16,000"])
    ax.set_xlabel("pretraining clips")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title("first run (2026-11-22)", fontsize=10)
    ax.set_ylim(0, 1800)
    ax.legend(fontsize=8, ncols=3, loc="upper center")
    ax.grid(alpha=0.3)

    def ratio(selected, stage):
        by = {r["clips"]: r["peak_rss_mb"] for r in selected if r["stage"] == stage}
        return by[16000] / by[1000] if 1000 in by and 16000 in by else None

    def latest_ratio(stage):
        """The stage's last measured pair: its last 16,000-clip row and the 1,000-clip row of the same run (note)."""
        noted = [r for r in rows if r["stage"] == stage and "note" in r]
        large = [r for r in noted if r["clips"] == 16000]
        if not large:
            return None
        small = [r for r in noted[:noted.index(large[-1])] if r["clips"] == 1000 and r["note"] == large[-1]["note"]]
        return large[-1]["peak_rss_mb"] / small[-1]["peak_rss_mb"] if small else None

    ax = ax_pair[1]
    width = 0.4
    for s, stage in enumerate(stages):
        before = ratio(first, stage)
        after = latest_ratio(stage)
        ax.bar(s - width / 2, before, width, color="0.7", label="first run" if s == 0 else None)
        if after is not None:
            ax.bar(s + width / 2, after, width, color="C0", label="latest run" if s == 0 else None)
    ax.axhline(1.25, color="C3", ls="--", lw=1, label="bar: 1.25")
    ax.set_xticks(range(len(stages)), stages)
    ax.set_ylabel("peak RSS at 16,000 / at 1,000 clips")
    ax.set_title("growth with the corpus", fontsize=10)
    ax.set_ylim(0, 2.1)
    ax.legend(fontsize=8, ncols=3, loc="upper center")


def stage1_cost(ax) -> None:
    rows = [json.loads(line) for line in (REPO / "benchmarks/results/stage1_cost_h100.jsonl").read_text().splitlines()
            if line]
    rows = [r for r in rows if not r["code"].startswith("before")]
    variants = list(dict.fromkeys((r["processor"], r["objective"]) for r in rows))
    for v, (processor, objective) in enumerate(variants):
        points = sorted((r["clips"], r["seconds"]) for r in rows if (r["processor"], r["objective"]) == (processor, objective))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{v}",
                label=f"{processor}, {objective}")
    ax.set_xticks([1024, 2048, 4096], ["1,024", "2,048", "4,096"])
    ax.set_xlabel("clips (90% trained, 10% retrieval)")
    ax.set_ylabel("seconds per align epoch, batch 128")
    ax.set_title("stage 1 on one H100 (ViT-B-sized m; torch 2.11)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def draw() -> dict[str, bytes]:
    plt.rcParams.update({"svg.hashsalt": "fourtier", "svg.fonttype": "path", "font.size": 9})
    figures = {}
    for name, size, ncols, painter in [("ftp_gains.svg", (9, 3.2), 2, ftp_gains), ("fewshot.svg", (9, 3.4), 2, fewshot),
                                       ("scale_memory.svg", (9, 3.4), 2, scale_memory),
                                       ("stage1_cost_h100.svg", (5, 3.4), 1, stage1_cost)]:
        fig, axes = plt.subplots(1, ncols, figsize=size, layout="constrained")
        painter(axes)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
        figures[name] = buffer.getvalue()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args()
    stale = []
    for name, content in draw().items():
        path = OUT / name
        if path.exists() and path.read_bytes() == content:
            continue
        stale.append(name)
        if not args.check:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    if stale:
        print(("stale: " if args.check else "wrote: ") + ", ".join(f"docs/figures/{n}" for n in stale))
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
