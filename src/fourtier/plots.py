"""Figures researchers look at (paper Appendix B), written by `evaluate` as DVC image plots:
t-SNE of the classifier features for FTP against the baseline (Figs B4/B5), and the per-class accuracy change,
FTP minus baseline, sorted (Fig B1)."""
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


def plot_class_gain(ftp: dict[str, float], baseline: dict[str, float], path: Path, title: str) -> None:
    """Per-class top-1 of FTP minus the baseline's, in percentage points, sorted."""
    plt = _pyplot()
    gain = sorted(((100 * (ftp[c] - baseline[c]), c) for c in ftp), reverse=True)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(gain) + 1.2))
    values = [g for g, _ in gain]
    ax.barh(range(len(gain)), values, color=["tab:green" if g >= 0 else "tab:red" for g in values])
    ax.set_yticks(range(len(gain)), [c for _, c in gain], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("top-1 change, FTP - baseline (pp)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def placeholder(path: Path, message: str) -> None:
    """A declared image plot that has nothing to show in this run says why."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)
