"""Few-shot stage 2: k labelled training clips per class, the same clips for every arm and every seed.

The draw depends only on (shots_seed, the training clips and their labels), so FTP, the baseline and both
controls are compared on identical data, and a training seed changes the initialisation and the batch
order but never which clips are labelled (the few-shot protocol of the paper's peers, e.g. ALT and X-CLIP:
k = 2, 4, 8, 16).
"""
from __future__ import annotations

import numpy as np

from fourtier.errors import DataError


def few_shot_subset(train_idx: np.ndarray, labels: np.ndarray, shots: int, seed: int, classes: list[str]) -> np.ndarray:
    """`shots` clips of each class from train_idx (sorted); shots 0 keeps them all. A class with fewer
    training clips than `shots` is an error naming it: a smaller k for some classes would not be k-shot."""
    if shots == 0:
        return train_idx
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(classes)):
        pool = np.sort(train_idx[labels[train_idx] == c])
        if len(pool) < shots:
            raise DataError(f"finetune.shots is {shots}, but class {classes[c]!r} has only {len(pool)} training "
                            "clips; choose a smaller k")
        chosen.append(rng.choice(pool, shots, replace=False))
    return np.sort(np.concatenate(chosen))
