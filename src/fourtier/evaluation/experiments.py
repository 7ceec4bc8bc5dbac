"""The paper's ablations as queued DVC experiments, and a report that turns `dvc exp show --json` into
Markdown tables shaped like the paper's (Tables 5, 6, 7 and C5) plus a plot of the FTP gain per dataset.

Each ablation queues one `dvc exp run --queue -n <name> -S ...` per setting; `dvc queue start -j N` runs them.
Experiment names encode the ablation (`prompts-g09-BC`, `K-3`, `vlm-blip2`, `backbone-videomae`, `shots-04`),
which is how the report finds them. `shots` is the few-shot protocol of the paper's peers (ALT, X-CLIP): stage 2
on k labelled clips per class, every arm on the same clips. Only the arms an ablation compares are trained: the FTP arm for prompts, K and VLMs
(the baseline does not depend on them; group 1 of the prompt table is the baseline), FTP and the baseline for
backbones (a backbone changes both).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from fourtier.errors import ParamsError

# Table 7's groups (the paper has no group 12)
PROMPT_GROUPS: dict[int, tuple[str, ...]] = dict(zip(
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17],
    [c for n in range(5) for c in itertools.combinations("ABCD", n)]))
ABLATIONS = ("prompts", "K", "vlm", "backbone", "shots")
DEFAULT_VALUES = {"K": [1, 3, 5, 7], "vlm": ["builtin", "builtin-terse", "builtin-noisy"],
                  "backbone": ["tiny"], "shots": [2, 4, 8, 16]}


@dataclass
class QueuedRun:
    name: str
    sets: list[str]  # -S values

    def command(self) -> list[str]:
        return ["dvc", "exp", "run", "--queue", "-n", self.name] + [a for s in self.sets for a in ("-S", s)]


def yaml_list(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def ablation_runs(kind: str, values: list[str] | None = None, extra_sets: list[str] = ()) -> list[QueuedRun]:
    """The experiments of one ablation. values: a subset (group numbers for prompts), else the defaults."""
    if kind not in ABLATIONS:
        raise ParamsError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATIONS)}")
    runs = []
    if kind == "prompts":
        groups = [int(v) for v in values] if values else list(PROMPT_GROUPS)
        unknown = [g for g in groups if g not in PROMPT_GROUPS]
        if unknown:
            raise ParamsError(f"unknown prompt group(s) {unknown}; Table 7 has groups {list(PROMPT_GROUPS)}")
        for g in groups:
            prompts = PROMPT_GROUPS[g]
            arms = "[ftp]" if prompts else "[baseline]"
            runs.append(QueuedRun(f"prompts-g{g:02d}-{''.join(prompts) or 'none'}",
                                  [f"prompts={yaml_list(prompts)}", f"finetune.arms={arms}"]))
    elif kind == "shots":  # every arm: the question is which one gains most when labels are scarce
        for v in values or DEFAULT_VALUES[kind]:
            if not str(v).isdigit() or int(v) < 1:
                raise ParamsError(f"shots must be a positive integer (clips per class), got {v!r}")
            runs.append(QueuedRun(f"shots-{int(v):02d}", [f"finetune.shots={int(v)}"]))
    else:
        for v in values or DEFAULT_VALUES[kind]:
            if kind == "K" and (not str(v).isdigit() or int(v) < 1):
                raise ParamsError(f"K must be a positive integer, got {v!r}")
            arms = "[baseline,ftp]" if kind == "backbone" else "[ftp]"
            safe = str(v).replace("/", "_").replace(":", "_")
            runs.append(QueuedRun(f"{kind}-{safe}", [f"{kind}={v}", f"finetune.arms={arms}"]))
    for run in runs:
        run.sets.extend(extra_sets)
    return runs


# ---------------------------------------------------------------------------------------------
# report

@dataclass
class Result:
    name: str
    params: dict
    metrics: dict[str, dict]  # dataset -> data/eval/<ds>/metrics.json
    timestamp: str


def collect(exp_show: list[dict]) -> list[Result]:
    """Every experiment (and the workspace/commits) with evaluation metrics in `dvc exp show --json` output."""
    states = []
    for entry in exp_show:
        states.append(entry)
        for exp_range in entry.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            if executor.get("state", "success") != "success":  # queued/running: its files are not its results
                continue
            states.extend(exp_range.get("revs") or [])
    results = []
    for state in states:
        data = state.get("data") or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
        metrics = {}
        for path, file_result in (data.get("metrics") or {}).items():
            parts = path.replace("\\", "/").split("/")
            if parts[:2] == ["data", "eval"] and parts[-1] == "metrics.json" and file_result.get("data"):
                metrics[parts[2]] = file_result["data"]
        if params and metrics:
            results.append(Result(state.get("name") or state["rev"][:7], params, metrics,
                                  str(data.get("timestamp") or "")))
    return results


def latest(results: list[Result], prefix: str) -> dict[str, Result]:
    """The newest result per experiment name starting with prefix (re-runs keep the name)."""
    chosen: dict[str, Result] = {}
    for r in sorted(results, key=lambda r: r.timestamp):
        if r.name.startswith(prefix):
            chosen[r.name] = r
    return chosen


def cell(metrics: dict, arm: str, key: str = "top1") -> str:
    value = (metrics.get(arm) or {}).get(key)
    if not value:
        return "-"
    return f"{100 * value['mean']:.1f} +- {100 * value['std']:.1f}"


def _datasets(results) -> list[str]:
    return sorted({ds for r in results for ds in r.metrics})


def prompt_table(results: list[Result]) -> str:
    runs = latest(results, "prompts-g")
    if not runs:
        return ""
    datasets = _datasets(runs.values())
    head = "| group | A | B | C | D | " + " | ".join(f"{ds} top-1 | {ds} top-5" for ds in datasets) + " |"
    lines = [head, "|" + "---|" * (5 + 2 * len(datasets))]
    for name, r in sorted(runs.items()):
        group = int(name.split("-")[1][1:])
        prompts = PROMPT_GROUPS[group]
        arm = "ftp" if prompts else "baseline"
        marks = " | ".join("x" if p in prompts else "" for p in "ABCD")
        values = " | ".join(f"{cell(r.metrics.get(ds, {}), arm)} | {cell(r.metrics.get(ds, {}), arm, 'top5')}"
                            for ds in datasets)
        lines.append(f"| {group} | {marks} | {values} |")
    return "\n".join(lines)


def setting_table(results: list[Result], kind: str) -> str:
    runs = latest(results, f"{kind}-")
    if not runs:
        return ""
    datasets = _datasets(runs.values())
    both = kind == "backbone"
    if both:
        head = f"| {kind} | " + " | ".join(f"{ds} baseline | {ds} FTP | {ds} gain" for ds in datasets) + " |"
        width = 1 + 3 * len(datasets)
    else:
        head = f"| {kind} | " + " | ".join(f"{ds} top-1 | {ds} top-5" for ds in datasets) + " |"
        width = 1 + 2 * len(datasets)
    lines = [head, "|" + "---|" * width]

    def order(item):
        value = item[1].params.get(kind)
        return (0, int(value)) if kind == "K" else (1, str(value))

    for _, r in sorted(runs.items(), key=order):
        cells = []
        for ds in datasets:
            m = r.metrics.get(ds, {})
            if both:
                gain = (m.get("ftp_gain_top1") or {}).get("mean")
                cells += [cell(m, "baseline"), cell(m, "ftp"), "-" if gain is None else f"{100 * gain:+.1f}"]
            else:
                cells += [cell(m, "ftp"), cell(m, "ftp", "top5")]
        lines.append(f"| {r.params.get(kind)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


FEW_SHOT_ARMS = ("baseline", "ftp", "random", "shuffled")


def few_shot_points(results: list[Result]) -> dict[str, dict[str, list[tuple[int, dict]]]]:
    """{dataset: {arm: [(k, top-1 summary), ...]}} from the shots-* experiments, k ascending."""
    points: dict[str, dict[str, list[tuple[int, dict]]]] = {}
    for r in sorted(latest(results, "shots-").values(), key=lambda r: int(r.name.split("-")[1])):
        k = int(r.name.split("-")[1])
        for ds, m in r.metrics.items():
            for arm in FEW_SHOT_ARMS:
                if (m.get(arm) or {}).get("top1"):
                    points.setdefault(ds, {}).setdefault(arm, []).append((k, m[arm]["top1"]))
    return points


def gain_ci(gain: dict, n: int) -> list[float] | None:
    """The paired gain's 95% interval: the evaluate stage's ci95_low / ci95_high. Results made before those
    scalars existed hold a list-valued `ci95` (kept metrics files), which `dvc exp show --json` drops: there the
    interval is recomputed from the mean and sample std over n seeds with evaluation's own formula."""
    if "ci95_low" in gain:
        return [gain["ci95_low"], gain["ci95_high"]]
    if "ci95" in gain:
        return list(gain["ci95"])
    if n < 2 or "mean" not in gain or "std" not in gain:
        return None
    from fourtier.evaluation.metrics import ci95_half_width  # here, not at import: it pulls in torch

    half = ci95_half_width(gain["std"], n)
    return [gain["mean"] - half, gain["mean"] + half]


def few_shot_table(results: list[Result]) -> str:
    runs = latest(results, "shots-")
    if not runs:
        return ""
    datasets = _datasets(runs.values())
    head = "| k | " + " | ".join(f"{ds} {arm}" for ds in datasets for arm in FEW_SHOT_ARMS) + \
        " | " + " | ".join(f"{ds} FTP gain [95% CI]" for ds in datasets) + " |"
    lines = [head, "|" + "---|" * (1 + (len(FEW_SHOT_ARMS) + 1) * len(datasets))]
    for name, r in sorted(runs.items(), key=lambda item: int(item[0].split("-")[1])):
        cells = [cell(r.metrics.get(ds, {}), arm) for ds in datasets for arm in FEW_SHOT_ARMS]
        seeds = len((r.params.get("finetune") or {}).get("seeds") or [])
        for ds in datasets:
            gain = r.metrics.get(ds, {}).get("ftp_gain_top1") or {}
            ci = gain_ci(gain, seeds)
            cells.append("-" if "mean" not in gain else f"{100 * gain['mean']:+.1f}" +
                         (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""))
        lines.append(f"| {int(name.split('-')[1])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_few_shot_table(results: list[Result], path) -> None:
    """fewshot.csv: a row per target, arm and k, top-1 in % (mean and sample std over seeds), for dvc.yaml's
    few-shot plot (.dvc/plots/fewshot.json: a line per arm, a panel per target, k on a log axis)."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["dataset", "arm", "shots", "top1", "top1_std"])
        for ds, arms in sorted(few_shot_points(results).items()):
            for arm, pts in arms.items():
                writer.writerows([ds, arm, k, f"{100 * v['mean']:.2f}", f"{100 * v['std']:.2f}"] for k, v in pts)


def report(results: list[Result]) -> str:
    sections = [("Prompt combinations (paper Table 7)", prompt_table(results)),
                ("Keyframes per tile K (paper Table C5)", setting_table(results, "K")),
                ("VLMs (paper Table 5)", setting_table(results, "vlm")),
                ("Backbones, with and without FTP (paper Table 6)", setting_table(results, "backbone")),
                ("Few-shot stage 2: k labelled clips per class, the same clips for every arm", few_shot_table(results))]
    out = [f"### {title}\n\nTop-1 / top-5 in %, mean +- sample std over seeds.\n\n{table}\n"
           for title, table in sections if table]
    if not out:
        return ("No finished ablation experiments found. Queue some with `fourtier ablate prompts` (or K, vlm, "
                "backbone, shots), run them with `dvc queue start`, and wait for `dvc queue status` to show them done.\n")
    return "\n".join(out)


def gain_per_dataset(results: list[Result]) -> dict[str, dict[str, float]]:
    """FTP top-1 gain over the baseline per dataset, for every ablation experiment that trained both arms or
    that a prompts-g01 (baseline) experiment can pair with: {experiment: {dataset: gain in pp}}."""
    baseline = latest(results, "prompts-g01")
    base = next(iter(baseline.values())).metrics if baseline else {}
    gains: dict[str, dict[str, float]] = {}
    ablations = {name: r for kind in ABLATIONS if kind != "shots" for name, r in latest(results, f"{kind}-").items()}
    for r in sorted(ablations.values(), key=lambda r: r.name):
        for ds, m in r.metrics.items():
            ftp = (m.get("ftp") or {}).get("top1")
            ref = (m.get("baseline") or (base.get(ds) or {}).get("baseline") or {}).get("top1")
            if ftp and ref:
                gains.setdefault(r.name, {})[ds] = round(100 * (ftp["mean"] - ref["mean"]), 2)
    return gains


def plot_gains(gains: dict[str, dict[str, float]], path) -> None:
    from fourtier.evaluation.plots import _pyplot

    plt = _pyplot()
    names = list(gains)
    datasets = sorted({ds for g in gains.values() for ds in g})
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) * max(1, len(datasets))), 4))
    width = 0.8 / max(1, len(datasets))
    for j, ds in enumerate(datasets):
        xs = [i + j * width for i in range(len(names))]
        ax.bar(xs, [gains[n].get(ds, 0.0) for n in names], width, label=ds)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=60, ha="right", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("FTP top-1 gain over the baseline (pp)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
