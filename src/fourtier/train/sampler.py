"""The batches of every epoch, drawn from (seed, epoch) alone: a resumed run draws the batches an
uninterrupted one draws, at any world size."""
from __future__ import annotations

import numpy as np
import torch

from fourtier.runtime import distributed


class EpochPlan:
    """The batches of every epoch: clip order and one random view per clip, drawn from (seed, epoch) alone, so
    a resumed run draws exactly the batches it would have drawn. Batches smaller than `min_batch` are dropped.
    Each batch's clips are sorted (neighbouring rows of the feature shards)."""

    def __init__(self, train_idx: np.ndarray, n_views: int, batch_size: int, seed: int, min_batch: int = 1):
        self.train_idx, self.n_views, self.batch_size = np.asarray(train_idx), n_views, batch_size
        self.seed, self.min_batch = seed, min_batch

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=gen).numpy()]
        batches = []
        for start in range(0, len(order), self.batch_size):
            idx = np.sort(order[start:start + self.batch_size])
            if len(idx) >= self.min_batch:
                batches.append((idx, torch.randint(self.n_views, (len(idx),), generator=gen).numpy()))
        return batches

    @property
    def steps(self) -> int:
        n, b = len(self.train_idx), self.batch_size
        return n // b + (1 if n % b >= self.min_batch else 0)

    def keys(self, first_epoch: int, epochs: int):
        """This rank's (clips, views) of every batch from `first_epoch` on, for the loader."""
        for epoch in range(first_epoch, epochs):
            for idx, views in self.epoch(epoch):
                part = distributed.shard(len(idx))
                yield idx[part], views[part]
