"""The frozen backbone's feature map m, per clip and per view: computed once and cached in float16.

Both training stages freeze the backbone (paper §3.2), so caching m is the main speed lever. The cache,
data/features/<ds>/, holds m.npy (clips, views, T, h, w, D) float16, videos.txt, labels.txt (class index
per clip), splits.txt and meta.json. `FeatureSource` reads it; `OnTheFlyFeatures` computes the same numbers
from the videos when the cache would be too large (`features.cache: false`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fourtier.clips import Preprocess, load_views, to_tensor
from fourtier.data.contract import read_annotations, read_classes
from fourtier.errors import DataError, VideoError
from fourtier.parallel import map_progress


def _decode_job(job):
    path, pre, t_views, s_views = job
    try:
        return load_views(path, pre, t_views, s_views), ""
    except VideoError as exc:
        return None, str(exc)


def decode_dataset(ds_dir: Path, pre: Preprocess, temporal_views: int, spatial_views: int, workers: int,
                   desc: str = "decode"):
    """All clips of a dataset as uint8 (N, V, T, S, S, 3), with the annotations kept and the ones skipped."""
    rows = read_annotations(ds_dir)
    jobs = [(str(Path(ds_dir) / r.path), pre, temporal_views, spatial_views) for r in rows]
    frames, kept, skipped = [], [], []
    for row, (views, reason) in zip(rows, map_progress(_decode_job, jobs, workers, desc)):
        if views is None:
            skipped.append({"video_id": row.video_id, "reason": reason})
            continue
        frames.append(views)
        kept.append(row)
    if not kept:
        raise DataError(f"no clip of {Path(ds_dir).name} could be decoded")
    return np.stack(frames), kept, skipped


def compute_features(backbone, ds_dir: Path, out_dir: Path, temporal_views: int, spatial_views: int,
                     batch_size: int, workers: int) -> dict:
    """Write the feature cache of one dataset."""
    pre = backbone.preprocess
    frames, rows, skipped = decode_dataset(ds_dir, pre, temporal_views, spatial_views, workers, f"decode {Path(ds_dir).name}")
    n, v = frames.shape[:2]
    probe = backbone.feature_map(to_tensor(frames[:1, 0], pre))
    out_dir.mkdir(parents=True, exist_ok=True)
    m = np.lib.format.open_memmap(out_dir / "m.npy", "w+", np.float16, (n, v, *probe.shape[1:]))
    flat = frames.reshape(n * v, *frames.shape[2:])
    from tqdm import tqdm

    with tqdm(total=n * v, desc=f"features {Path(ds_dir).name}", unit="view", dynamic_ncols=True, mininterval=1.0) as bar:
        for start in range(0, n * v, batch_size):
            batch = to_tensor(flat[start:start + batch_size], pre)
            out = backbone.feature_map(batch).numpy().astype(np.float16)
            idx = np.arange(start, start + len(out))
            m[idx // v, idx % v] = out
            bar.update(len(out))
    m.flush()
    classes = read_classes(ds_dir)
    (out_dir / "videos.txt").write_text("".join(f"{r.video_id}\n" for r in rows))
    (out_dir / "labels.txt").write_text("".join(f"{classes.index(r.label)}\n" for r in rows))
    (out_dir / "splits.txt").write_text("".join(f"{r.split}\n" for r in rows))
    meta = {"dataset": Path(ds_dir).name, "backbone": backbone.name, "shape": list(m.shape), "dtype": "float16",
            "temporal_views": temporal_views, "spatial_views": spatial_views, "classes": classes,
            "skipped": skipped}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


class FeatureSource:
    """m of one dataset from the cache: m(indices, views) -> float32 tensor (B, T, h, w, D)."""

    def __init__(self, feature_dir: Path):
        feature_dir = Path(feature_dir)
        if not (feature_dir / "meta.json").exists():
            raise DataError(f"{feature_dir} has no features: run the features stage first (dvc repro)")
        self.meta = json.loads((feature_dir / "meta.json").read_text())
        self.m = np.load(feature_dir / "m.npy", mmap_mode="r")
        self.videos = (feature_dir / "videos.txt").read_text().split()
        self.labels = np.array([int(x) for x in (feature_dir / "labels.txt").read_text().split()])
        self.splits = np.array((feature_dir / "splits.txt").read_text().split())
        self.classes = self.meta["classes"]

    @property
    def n_views(self) -> int:
        return self.m.shape[1]

    @property
    def dim(self) -> int:
        return self.m.shape[-1]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.m.shape[2:5])

    def split(self, name: str) -> np.ndarray:
        idx = np.nonzero(self.splits == name)[0]
        if len(idx) == 0:
            raise DataError(f"{self.meta['dataset']} has no clips in split {name!r} "
                            f"(splits present: {sorted(set(map(str, self.splits)))})")
        return idx

    def get(self, indices, views) -> torch.Tensor:
        """m for clips `indices`, view views[k] for clip k (or one view for all)."""
        indices = np.asarray(indices)
        views = np.broadcast_to(np.asarray(views), indices.shape)
        return torch.from_numpy(np.asarray(self.m[indices, views], dtype=np.float32))


class OnTheFlyFeatures(FeatureSource):
    """The same interface, computing m from the videos for every request (no cache on disk)."""

    def __init__(self, ds_dir: Path, backbone, temporal_views: int, spatial_views: int):
        self.ds_dir = Path(ds_dir)
        self.backbone = backbone
        self.tv, self.sv = temporal_views, spatial_views
        rows = read_annotations(ds_dir)
        classes = read_classes(ds_dir)
        self.rows = rows
        self.videos = [r.video_id for r in rows]
        self.labels = np.array([classes.index(r.label) for r in rows])
        self.splits = np.array([r.split for r in rows])
        self.classes = classes
        self.meta = {"dataset": self.ds_dir.name}
        probe = self._views(0)
        self._shape = (len(rows), probe.shape[0], *backbone.feature_map(to_tensor(probe[:1], backbone.preprocess)).shape[1:])

    def _views(self, i: int) -> np.ndarray:
        return load_views(str(self.ds_dir / self.rows[i].path), self.backbone.preprocess, self.tv, self.sv)

    @property
    def n_views(self) -> int:
        return self._shape[1]

    @property
    def dim(self) -> int:
        return self._shape[-1]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self._shape[2:5])

    def get(self, indices, views) -> torch.Tensor:
        indices = np.asarray(indices)
        views = np.broadcast_to(np.asarray(views), indices.shape)
        frames = np.stack([self._views(i)[v] for i, v in zip(indices, views)])
        m = self.backbone.feature_map(to_tensor(frames, self.backbone.preprocess))
        return m.to(torch.float16).to(torch.float32)  # the cache's precision, so both paths agree
