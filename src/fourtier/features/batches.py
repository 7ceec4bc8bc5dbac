"""Batches for training and evaluation: index plans drawn in the main process, m loaded by workers.
A key is (clip positions, views), both arrays."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from fourtier.features.decode import _one_thread


def as_keys(indices, views) -> tuple[np.ndarray, np.ndarray]:
    """A key as every source's `load` takes it: clip positions as a flat int64 array, and one view per clip
    (a single view is broadcast to all)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    return indices, np.broadcast_to(np.asarray(views, dtype=np.int64), indices.shape)


class _Batches(torch.utils.data.Dataset):
    """Loads one batch per key; a key is (clip positions, views), both arrays."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, key):
        return torch.from_numpy(self.source.load(*key))

    def __getitem__(self, key):
        return self.__getitems__(key)


def _as_is(batch):
    return batch


def batch_loader(source, keys: Iterable[tuple[np.ndarray, np.ndarray]], workers: int, device: torch.device):
    """Loads each key (clip positions, views) as one batch (float16 m, or frames on the fly), in `workers`
    processes with pinned memory next to a GPU. `keys` is drawn lazily in this process. With no workers the
    batches are read right here: a DataLoader would only add its own overhead (1.6 ms a batch, measured)."""
    if workers == 0:
        return (torch.from_numpy(source.load(*key)) for key in keys)
    # its own generator: a loader draws a base seed when it starts, which must not move the global RNG
    # (dropout draws from it, and a resumed run restores it before the loader starts)
    return torch.utils.data.DataLoader(_Batches(source), batch_sampler=keys, num_workers=workers, collate_fn=_as_is,
                                       pin_memory=device.type == "cuda", prefetch_factor=4,
                                       worker_init_fn=_one_thread, generator=torch.Generator().manual_seed(0))
