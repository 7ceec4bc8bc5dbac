"""Reading m: from the features stage's cache, or computed from the videos for every request
(features.cache: false), through one interface (`load` in a loader worker, `to_m` on the device)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fourtier.data.contract import parse_folds, read_annotations, read_classes
from fourtier.data.shards import ShardedArray
from fourtier.errors import DataError
from fourtier.features.batches import as_keys
from fourtier.features.decode import ClipViews, frames_to_m, probe_view_shape


class FeatureSource:
    """m of one dataset from the cache. `load(indices, views)` reads float16 rows (in a loader worker);
    `to_m(loaded, device)` makes them float32 on the device; `get` is both."""

    def __init__(self, feature_dir: Path):
        feature_dir = Path(feature_dir)
        if not (feature_dir / "meta.json").exists():
            raise DataError(f"{feature_dir} has no features: run the features stage first (dvc repro)")
        self.meta = json.loads((feature_dir / "meta.json").read_text())
        if not self.meta.get("cache", True):
            raise DataError(f"{feature_dir} holds no m (features.cache: false); open it with open_features")
        self.store = ShardedArray.open(feature_dir, "m")
        self._read_index(feature_dir)

    def _read_index(self, feature_dir: Path) -> None:
        self.videos = (feature_dir / "videos.txt").read_text().split()
        self.labels = np.array([int(x) for x in (feature_dir / "labels.txt").read_text().split()])
        self.splits = np.array((feature_dir / "splits.txt").read_text().split())
        self.rows = np.array([int(x) for x in (feature_dir / "rows.txt").read_text().split()], dtype=np.int64)
        self.classes = self.meta["classes"]
        folds = feature_dir / "folds.txt"
        self._set_folds(folds.read_text().splitlines() if folds.exists() else [])

    def _set_folds(self, lines: list[str]) -> None:
        """folds[k]: every clip's role in official split k (train, val or unused); {} for one split."""
        parsed = [parse_folds(line) for line in lines if line]
        self.folds = {k: np.array([p[k] for p in parsed]) for k in (parsed[0] if parsed else {})}

    @property
    def n_views(self) -> int:
        return self.meta["shape"][1]

    @property
    def dim(self) -> int:
        return self.meta["shape"][-1]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape"][2:5])

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def fold_ids(self) -> list[int | None]:
        """The official splits stage 2 runs once each (README, "Three splits"); [None]: one split, `splits`."""
        return sorted(self.folds) or [None]

    def split(self, name: str, fold: int | None = None) -> np.ndarray:
        """The clips whose role is `name` (train or val): in `splits`, or in official split `fold`."""
        if fold is not None and fold not in self.folds:
            raise DataError(f"{self.meta['dataset']} has no official split {fold} (it was downloaded with "
                            f"{sorted(self.folds) or 'one split'})")
        roles = self.splits if fold is None else self.folds[fold]
        idx = np.nonzero(roles == name)[0]
        if len(idx) == 0:
            where = "" if fold is None else f" of official split {fold}"
            raise DataError(f"{self.meta['dataset']} has no clips in split {name!r}{where} "
                            f"(splits present: {sorted(set(map(str, roles)))})")
        return idx

    def load(self, indices, views) -> np.ndarray:
        """float16 m (B, T', h, w, D) of clips `indices`, view views[k] for clip k (or one view for all)."""
        indices, views = as_keys(indices, views)
        return self.store.read(self.rows[indices] * self.n_views + views)

    def to_m(self, loaded, device: torch.device = torch.device("cpu")) -> torch.Tensor:
        return torch.as_tensor(loaded).to(device, non_blocking=True).float()

    def get(self, indices, views, device: torch.device = torch.device("cpu")) -> torch.Tensor:
        return self.to_m(self.load(indices, views), device)


class OnTheFlyFeatures(FeatureSource):
    """The same interface, computing m from the videos for every request (features.cache: false): `load`
    decodes (in a loader worker), `to_m` runs the backbone on the device."""

    def __init__(self, ds_dir: Path, backbone, temporal_views: int, spatial_views: int, feature_dir: Path | None = None,
                 device: torch.device = torch.device("cpu")):
        self.ds_dir = Path(ds_dir)
        self.backbone = backbone
        self.device = device
        backbone.to(device)
        rows = read_annotations(ds_dir)
        if feature_dir is not None:  # the index the features stage wrote: readable clips only
            self.meta = json.loads((Path(feature_dir) / "meta.json").read_text())
            self._read_index(Path(feature_dir))
            self.paths = [rows[i].path for i in self.rows]
        else:
            classes = read_classes(ds_dir)
            self.paths = [r.path for r in rows]
            self.videos = [r.video_id for r in rows]
            self.labels = np.array([classes.index(r.label) for r in rows])
            self.splits = np.array([r.split for r in rows])
            self._set_folds([r.folds for r in rows])
            self.rows = np.arange(len(rows))
            self.classes = classes
            self.meta = {"dataset": self.ds_dir.name, "shape": [len(rows), temporal_views * spatial_views,
                                                                *probe_view_shape(backbone, device)]}
        self.clips = ClipViews(self.ds_dir, self.paths, backbone.preprocess, temporal_views, spatial_views)

    def load(self, indices, views) -> np.ndarray:
        indices, views = as_keys(indices, views)
        pre = self.backbone.preprocess
        out = np.empty((len(indices), pre.frames, pre.size, pre.size, 3), np.uint8)
        for j, (i, v) in enumerate(zip(indices, views)):
            _, clip, reason = self.clips[int(i)]
            if clip is None:
                raise DataError(f"{self.videos[i]} can no longer be decoded ({reason}); re-run the features stage")
            out[j] = clip[v]
        return out

    def to_m(self, loaded, device: torch.device | None = None) -> torch.Tensor:
        device = device or self.device
        # the cache's precision, so both paths give the same numbers
        return frames_to_m(self.backbone, loaded, device).to(device).float()


def open_features(feature_dir: Path, raw_dir: Path, backbone_dir: Path, device: torch.device):
    """The cached m, or the on-the-fly source when the features stage ran with features.cache: false."""
    meta_path = Path(feature_dir) / "meta.json"
    if meta_path.exists() and not json.loads(meta_path.read_text()).get("cache", True):
        from fourtier.models.backbone import load_backbone

        meta = json.loads(meta_path.read_text())
        return OnTheFlyFeatures(raw_dir, load_backbone(backbone_dir), meta["temporal_views"], meta["spatial_views"],
                                feature_dir=feature_dir, device=device)
    return FeatureSource(feature_dir)
