"""Decoded clips on disk (uint8 views), for the backbone's pretraining: decoded once, read a batch at
a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from fourtier.data.contract import read_annotations
from fourtier.data.shards import ShardedArray, rows_per_shard
from fourtier.errors import DataError
from fourtier.features.batches import as_keys
from fourtier.features.decode import ClipViews, Ranges, clip_loader
from fourtier.video.clips import Preprocess


class FrameStore:
    """Decoded clips on disk (uint8 views), for the backbone's pretraining: decoded once by the clip loader,
    then read a batch at a time. `load(indices, views)` -> (B, T, S, S, 3) uint8 over the readable clips."""

    def __init__(self, directory: Path, ds_dir: Path, pre: Preprocess, temporal_views: int, workers: int,
                 batch_size: int = 32):
        rows = read_annotations(ds_dir)
        self.n_views = temporal_views
        self.store = ShardedArray(directory, "frames", len(rows) * temporal_views, (pre.frames, pre.size, pre.size, 3),
                                  np.uint8, rows_per_shard(pre.frames * pre.size * pre.size * 3, 2048))
        self.store.create()
        dataset = ClipViews(ds_dir, [r.path for r in rows], pre, temporal_views, 1)
        failed_all = []
        with tqdm(total=len(rows), desc=f"decode {Path(ds_dir).name}", unit="clip", dynamic_ncols=True,
                  mininterval=1.0) as bar:
            for positions, frames, failed in clip_loader(dataset, Ranges(len(rows), batch_size), workers):
                for i, views in zip(positions, frames.numpy() if frames is not None else []):
                    self.store.write(i * temporal_views, views)
                failed_all += failed
                bar.update(len(positions) + len(failed))
        bad = {i for i, _ in failed_all}
        self.rows = np.array([i for i in range(len(rows)) if i not in bad], dtype=np.int64)
        self.kept = [rows[i] for i in self.rows]
        self.skipped = [{"video_id": rows[i].video_id, "reason": reason} for i, reason in failed_all]
        if not self.kept:
            raise DataError(f"no clip of {Path(ds_dir).name} could be decoded")

    def load(self, indices, views) -> np.ndarray:
        indices, views = as_keys(indices, views)
        return self.store.read(self.rows[indices] * self.n_views + views)
