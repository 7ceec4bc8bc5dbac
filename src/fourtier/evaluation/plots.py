"""Figures researchers look at (paper Appendix B), written by `evaluate`: t-SNE of the classifier features for
FTP against the baseline (Figs B4/B5) as an image, and per-class top-1 (Fig B1: the change, FTP minus baseline)
as a CSV that dvc.yaml declares as a DVC plot, so that `dvc plots diff` compares it across experiments."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-d t-SNE, on one thread: the Barnes-Hut gradient sums in thread order, and tsne.png is in dvc.lock, so
    the same features must give the same picture on a machine with any number of cores (a few seconds here)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    with threadpool_limits(1):
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def plot_tsne(by_arm: dict[str, np.ndarray], labels: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """One panel per arm: each clip's classifier feature (pooled, before the linear layer), coloured by class."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(by_arm), figsize=(5.5 * len(by_arm), 5.2), squeeze=False)
    cmap = plt.get_cmap("tab20", max(len(classes), 1))
    for ax, (arm, features) in zip(axes[0], by_arm.items()):
        xy = tsne_2d(features)
        for c, name in enumerate(classes):
            keep = labels == c
            ax.scatter(xy[keep, 0], xy[keep, 1], s=8, color=cmap(c), label=name if ax is axes[0][0] else None)
        ax.set_title(f"{arm}")
        ax.set_xticks([])
        ax.set_yticks([])
    if len(classes) <= 20:
        fig.legend(loc="lower center", ncol=min(6, len(classes)), fontsize=7, markerscale=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 if len(classes) <= 20 else 0, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_class_table(per_class: dict[str, dict[str, float]], path: Path) -> None:
    """per_class.csv: a row per class, its top-1 per arm in % (mean of seeds) and `ftp_minus_baseline` in pp
    (empty where an arm was not trained), in class order; dvc.yaml plots the change, sorted (paper Fig B1)."""
    import csv

    arms = list(per_class)
    classes = list(next(iter(per_class.values()))) if per_class else []
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["class", *arms, "ftp_minus_baseline"])
        for c in classes:
            gain = (f"{100 * (per_class['ftp'][c] - per_class['baseline'][c]):.2f}"
                    if "ftp" in per_class and "baseline" in per_class else "")
            writer.writerow([c, *(f"{100 * per_class[arm][c]:.2f}" for arm in arms), gain])


def placeholder(path: Path, message: str) -> None:
    """A declared image plot that has nothing to show in this run says why."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)
