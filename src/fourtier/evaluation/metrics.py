"""Evaluation: accuracy metrics from multi-view predictions, FLOPs and parameter overhead, CPU latency."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fourtier.errors import DataError

KINDS = ("top1", "top5", "mean_class_accuracy")  # the accuracy figures metrics.json summarises per arm


def load_classifier(path: Path, classes: list[str]):
    """A stage-2 model (path without suffix); refuses one trained with another class map than `classes`."""
    from fourtier.models.ftp import FTP

    model, meta = FTP.load(path)
    if meta.get("classes") != classes:
        raise DataError(f"{path}.safetensors was trained with a different class map than the dataset's classes.txt; "
                        "re-run finetune (dvc repro)")
    return model.eval()


def accuracy_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """top-1, top-5, mean class accuracy, per-class accuracy and the confusion matrix."""
    pred = probs.argmax(1)
    k = min(5, probs.shape[1])
    top5 = (np.argsort(-probs, 1)[:, :k] == labels[:, None]).any(1)
    n = len(classes)
    confusion = np.zeros((n, n), int)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {c: float(confusion[i, i] / confusion[i].sum()) for i, c in enumerate(classes) if confusion[i].sum()}
    return {"top1": float((pred == labels).mean()), "top5": float(top5.mean()),
            "mean_class_accuracy": float(np.mean(list(per_class.values()))), "per_class": per_class,
            "confusion": confusion.tolist()}


def summarise(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1) over seeds. Scalars only: `dvc metrics show`, `diff` and
    `dvc exp show` drop list-valued metrics, so the runs themselves go to runs.json (stages/evaluate.py)."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": round(float(np.mean(values)), 4), "std": round(std, 4)}


def arm_summary(results: dict[str, list[dict]]) -> dict:
    """Per arm mean +- sample std over seeds; every arm's paired gain over the baseline and FTP's over both
    controls (paired by seed, 95% t-interval)."""
    metrics = {arm: {k: summarise([r[k] for r in rs]) for k in KINDS} for arm, rs in results.items()}
    metrics.update(gains({arm: [r["top1"] for r in rs] for arm, rs in results.items()}))
    return metrics


def gains(top1: dict[str, list[float]]) -> dict:
    """The paired differences of metrics.json: each arm - baseline, FTP - each control (lists paired by index)."""
    out = {}
    if "baseline" in top1:
        for arm, values in top1.items():
            if arm != "baseline":
                out[f"{arm}_gain_top1"] = paired_gain(values, top1["baseline"])
    if "ftp" in top1:  # what the captions add beyond the processors' capacity and beyond captions at random
        for control in ("random", "shuffled"):
            if control in top1:
                out[f"ftp_minus_{control}_top1"] = paired_gain(top1["ftp"], top1[control])
    return out


def over_splits(results: dict[int, dict[str, list[dict]]]) -> dict:
    """The three-split protocol (README, "Three splits"): per arm, each split's mean over seeds, then the mean
    and sample std over splits; gains paired by split; each split's own summary under split<k>."""
    arms = [arm for arm in next(iter(results.values())) if all(arm in r for r in results.values())]
    per_split = {arm: {k: [float(np.mean([r[k] for r in results[fold][arm]])) for fold in results] for k in KINDS}
                 for arm in arms}
    metrics = {arm: {k: summarise(v) for k, v in per_split[arm].items()} for arm in arms}
    metrics.update(gains({arm: per_split[arm]["top1"] for arm in arms}))
    metrics.update({f"split{fold}": arm_summary(rs) for fold, rs in results.items()})
    return metrics


def seed_table(results: dict[str, list[dict]], seeds: list[int]) -> dict:
    """runs.json's table: every arm's top-1, top-5 and mean class accuracy per seed (metrics.json has scalars)."""
    return {"seeds": seeds, **{arm: {k: [round(r[k], 4) for r in rs] for k in KINDS} for arm, rs in results.items()}}


def top1_line(metrics: dict, arms) -> str:
    """'ftp 0.612+-0.012, baseline ...': each arm's top-1 mean and sample std, as the stages print them."""
    return ", ".join(f"{arm} {metrics[arm]['top1']['mean']:.3f}+-{metrics[arm]['top1']['std']:.3f}" for arm in arms)


def gain_lines(metrics: dict, over: str) -> list[str]:
    """The paired gains of metrics.json as the stages print them, one line each."""
    lines = []
    for key in [k for k in metrics if k.endswith("_top1")]:
        gain = metrics[key]
        ci = f" [{gain['ci95_low']:+.3f}, {gain['ci95_high']:+.3f}]" if "ci95_low" in gain else ""
        lines.append(f"  {key.removesuffix('_top1').replace('_gain', ' - baseline').replace('_minus_', ' - ')}: "
                     f"{gain['mean']:+.3f}{ci} (paired over {over}, 95% interval)")
    return lines


def ci95_half_width(std: float, n: int) -> float:
    """Half the t-based 95% interval of a mean of n values with sample standard deviation `std`."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def paired_gain(arm: list[float], baseline: list[float]) -> dict:
    """arm - baseline per seed (same seed = same initial classifier and data order): mean, sample std and the
    t-based 95% interval of the mean as two scalars, ci95_low and ci95_high (with two or more seeds)."""
    gain = np.asarray(arm) - np.asarray(baseline[:len(arm)])
    out = summarise(list(gain))
    if len(gain) > 1:
        half = ci95_half_width(float(np.std(gain, ddof=1)), len(gain))
        out.update(ci95_low=round(float(gain.mean()) - half, 4), ci95_high=round(float(gain.mean()) + half, 4))
    return out


def count_flops(fn, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn(*args)
    return int(counter.get_total_flops())


def overhead(backbone, ftp_model, baseline_model, clip: torch.Tensor) -> dict:
    """FLOPs and parameters of backbone + FTP head against backbone + the no-prompt head, for one view."""
    m = backbone.feature_map(clip)
    flops_backbone = count_flops(backbone.feature_map, clip)
    flops_ftp = flops_backbone + count_flops(ftp_model, m)
    flops_base = flops_backbone + count_flops(baseline_model, m)
    params_backbone = sum(p.numel() for p in backbone.module.parameters())
    inference_params = lambda model: sum(p.numel() for name, p in model.named_parameters()  # noqa: E731
                                         if not name.startswith("align_heads"))
    params_ftp = params_backbone + inference_params(ftp_model)
    params_base = params_backbone + inference_params(baseline_model)
    return {"gflops_per_view_ftp": round(flops_ftp / 1e9, 4), "gflops_per_view_baseline": round(flops_base / 1e9, 4),
            "flops_overhead_pct": round(100 * (flops_ftp - flops_base) / flops_base, 2),
            "params_ftp": params_ftp, "params_baseline": params_base,
            "params_overhead_pct": round(100 * (params_ftp - params_base) / params_base, 2)}


def latency_ms(backbone, model, clip_views: torch.Tensor, repeats: int = 10) -> float:
    """Median CPU time to classify one clip (all its views: backbone + head)."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 2):
            start = time.perf_counter()
            model(backbone.feature_map(clip_views)).softmax(-1).mean(0)
            times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times[2:])), 2)
