"""Clips decoded in DataLoader worker processes, a batch at a time, and the backbone run on them:
uint8 views travel to the device, are normalised there, and come back as float16 m."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fourtier.data.store import local_file
from fourtier.errors import VideoError
from fourtier.runtime.hardware import frozen_autocast
from fourtier.video.clips import Preprocess, load_views, to_tensor


class ClipViews(torch.utils.data.Dataset):
    """Clip i of a dataset as uint8 views (V, T, S, S, 3), or the reason it cannot be decoded."""

    def __init__(self, ds_dir: Path, paths: list[str], pre: Preprocess, temporal_views: int, spatial_views: int):
        self.ds_dir, self.paths, self.pre = Path(ds_dir), paths, pre
        self.tv, self.sv = temporal_views, spatial_views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with local_file(self.ds_dir, self.paths[i]) as path:  # a video in a shard is copied out first
            try:
                return i, load_views(str(path), self.pre, self.tv, self.sv), ""
            except VideoError as exc:
                return i, None, str(exc).replace(str(path), self.paths[i])


def collate_clips(items):
    """(positions of the decoded clips, their views stacked or None, [(position, reason)] of the others)."""
    ok = [(i, views) for i, views, _ in items if views is not None]
    failed = [(i, reason) for i, views, reason in items if views is None]
    # a tensor, not an array: a DataLoader passes tensors from its workers through shared memory, arrays
    # through a pipe (pickled), which capped a GPU run at a third of its decoding rate
    frames = torch.from_numpy(np.stack([views for _, views in ok])) if ok else None
    return [i for i, _ in ok], frames, failed


class Ranges(torch.utils.data.Sampler):
    """Batches [k*B, (k+1)*B) for k = first, first + step, ...: lazily, so nothing grows with the dataset
    (step: the number of ranks, each taking every step-th batch)."""

    def __init__(self, n: int, batch_size: int, first: int = 0, step: int = 1):
        self.n, self.batch_size, self.first, self.step = n, batch_size, first, step

    def __len__(self) -> int:
        return len(range(self.first, -(-self.n // self.batch_size), self.step))

    def __iter__(self):
        for k in range(self.first, -(-self.n // self.batch_size), self.step):
            yield list(range(k * self.batch_size, min(self.n, (k + 1) * self.batch_size)))


def clip_loader(dataset: ClipViews, batches, workers: int, device: torch.device = torch.device("cpu")):
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate_clips,
                                       prefetch_factor=4 if workers else None, worker_init_fn=_one_thread,
                                       pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(0))


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers: the main process's threads run the backbone


def frames_to_m(backbone, frames, device: torch.device) -> torch.Tensor:
    """uint8 frames (B, T, S, S, 3) -> m (B, T', h, w, D) float16 on the CPU. The uint8 frames travel to the
    device (a quarter of the bytes of float32) and are normalised there."""
    x = to_tensor(torch.as_tensor(frames).to(device, non_blocking=True), backbone.preprocess)
    with torch.inference_mode(), frozen_autocast(device):
        m = backbone.feature_map(x)
    return m.to(torch.float16).cpu()


def probe_view_shape(backbone, device: torch.device) -> tuple[int, ...]:
    """The shape (T', h, w, D) of one view's m, probed on a clip of zeros."""
    pre = backbone.preprocess
    return tuple(frames_to_m(backbone, np.zeros((1, pre.frames, pre.size, pre.size, 3), np.uint8), device).shape[1:])
