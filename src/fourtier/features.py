"""The frozen backbone's feature map m, per clip and per view: computed once, streamed, cached in float16.

Both training stages freeze the backbone (paper §3.2), so caching m is the main speed lever. Nothing here
holds a dataset in memory: clips are decoded by DataLoader worker processes, a batch at a time, the backbone
runs on `runtime.device`, and each batch of m is written to its place on disk as it completes.

The cache, data/features/<ds>/, holds:
- m-00000.npy, ... (rows of one view each: (T', h, w, D) float16; clip i's view v is row rows[i] * V + v), in
  shards of at most `features.shard_mb` (m.json says how rows map to shards);
- videos.txt, labels.txt (class index), splits.txt, rows.txt: one line per readable clip;
- meta.json (shape, views, classes, skipped clips with the reason, device).

A killed run resumes from the last finished batch (its partial output is kept beside the stage output, in
data/features/.<ds>.partial/) and writes the same bytes as an uninterrupted one. With `features.cache: false`
the stage checks that every clip decodes and writes only the index; `OnTheFlyFeatures` then computes m
whenever a stage asks, through the same loader and device path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from fourtier import distributed
from fourtier.clips import Preprocess, load_views, to_tensor
from fourtier.data.contract import read_annotations, read_classes
from fourtier.errors import DataError, VideoError
from fourtier.runtime import frozen_autocast
from fourtier.shards import ShardedArray, rows_per_shard
from fourtier.store import local_file

# ---------------------------------------------------------------------------------------------
# decoding in DataLoader workers


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
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        views = np.broadcast_to(np.asarray(views, dtype=np.int64), indices.shape)
        return self.store.read(self.rows[indices] * self.n_views + views)


# ---------------------------------------------------------------------------------------------
# the features stage


def _run_key(rows, backbone, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps([[r.video_id, r.path, r.label, r.split] for r in rows], sort_keys=True).encode())
    for name, tensor in backbone.module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.replace(path)  # atomic: a kill never leaves half a file


def _resume_point(work: Path, key: str) -> tuple[int, list[dict]]:
    """(first batch not known to be done, the skipped clips of the batches before it) from the progress files
    of an earlier run with the same key, at any world size: rank r of W did batches first + r + W*j for
    j < done, so every batch before min over r of (first + r + W*done) is done."""
    files = [json.loads(path.read_text()) for path in sorted(work.glob("progress-*.json"))]
    files = [f for f in files if f.get("key") == key]
    if not files:
        return 0, []
    world, first = files[0]["world"], files[0]["first"]
    done = {f["rank"]: f["done"] for f in files}
    resume = min(first + r + world * done.get(r, 0) for r in range(world))
    skipped = {s["i"]: s for f in files for s in f["skipped"] if s["batch"] < resume}
    return resume, [skipped[i] for i in sorted(skipped)]


def compute_features(backbone, ds_dir: Path, out_dir: Path, temporal_views: int, spatial_views: int,
                     batch_size: int, workers: int, device: torch.device = torch.device("cpu"),
                     shard_mb: int = 2048, cache: bool = True, stop_after: int | None = None) -> dict | None:
    """Write the feature cache of one dataset (or, with cache=False, only its index). Resumable.

    Under torchrun rank r of W computes batches r, r + W, ... of the same batches one process computes, and
    writes each row of m to its place: the cache is byte for byte the one of one process (on the CPU). Each
    rank records its progress in its own file; rank 0 writes the index and returns the metadata (the other
    ranks return None). A resume may use another world size. `stop_after` ends the run after that many batches
    of this rank, as a kill would (for tests)."""
    ds_dir, out_dir = Path(ds_dir), Path(out_dir)
    rows = read_annotations(ds_dir)
    classes = read_classes(ds_dir)
    n, v = len(rows), temporal_views * spatial_views
    pre = backbone.preprocess
    backbone.to(device)
    probe = frames_to_m(backbone, np.zeros((1, pre.frames, pre.size, pre.size, 3), np.uint8), device)
    view_shape = tuple(probe.shape[1:])
    settings = {"temporal_views": temporal_views, "spatial_views": spatial_views, "batch_size": batch_size,
                "shard_mb": shard_mb, "cache": cache, "device": device.type}
    work = out_dir.parent / f".{out_dir.name}.partial"
    key = _run_key(rows, backbone, settings)
    per_shard = rows_per_shard(int(np.prod(view_shape)) * 2, shard_mb)
    store = ShardedArray(work, "m", n * v, view_shape, np.float16, per_shard)
    rank, world = distributed.rank(), distributed.world()
    if distributed.is_main():  # decide fresh or resume once, before any rank writes
        first, skipped = _resume_point(work, key) if work.exists() else (0, [])
        if first:
            print(f"features {ds_dir.name}: resuming at clip {min(n, first * batch_size)} of {n}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            if cache:
                store.create()
        # the new progress first (atomically), then the old ranks' files: a kill in between loses no skipped clip
        _write_json(work / "progress-0.json", {"key": key, "world": world, "rank": 0, "first": first, "done": 0,
                                               "skipped": skipped})
        for old in work.glob("progress-*.json"):
            if old.name != "progress-0.json":
                old.unlink()
    distributed.barrier()
    first = json.loads((work / "progress-0.json").read_text())["first"]
    progress_path = work / f"progress-{rank}.json"
    progress = {"key": key, "world": world, "rank": rank, "first": first, "done": 0, "skipped": []}
    if rank == 0:
        progress = json.loads(progress_path.read_text())
    else:
        _write_json(progress_path, progress)
    store.writable = True
    dataset = ClipViews(ds_dir, [r.path for r in rows], pre, temporal_views, spatial_views)
    batches = Ranges(n, batch_size, first + rank, world)
    done = 0
    with tqdm(total=n, initial=min(n, first * batch_size), desc=f"features {ds_dir.name}", unit="clip",
              dynamic_ncols=True, mininterval=1.0, disable=not distributed.is_main()) as bar:
        for batch, (positions, frames, failed) in zip(batches, clip_loader(dataset, batches, workers, device)):
            if cache and frames is not None:
                flat = frames.reshape(-1, *frames.shape[2:])  # (clips * V, T, S, S, 3), view-major per clip
                for start in range(0, len(flat), batch_size):  # the same backbone batches as one clip per row
                    m = frames_to_m(backbone, flat[start:start + batch_size], device).numpy()
                    for j, row in enumerate(range(start, start + len(m))):
                        store.write(positions[row // v] * v + row % v, m[j:j + 1])
            k = batch[0] // batch_size
            progress["skipped"] += [{"i": i, "batch": k, "video_id": rows[i].video_id, "reason": reason}
                                    for i, reason in failed]
            progress["done"] += 1
            _write_json(progress_path, progress)
            bar.update((len(positions) + len(failed)) * world)
            done += 1
            if stop_after is not None and done >= stop_after:
                store.close()
                raise KeyboardInterrupt  # a kill, part-way: the work so far is kept
    store.close()
    distributed.barrier()  # every rank's rows are written
    if not distributed.is_main():
        return None
    skipped_by_clip = {s["i"]: s for path in work.glob("progress-*.json") for s in json.loads(path.read_text())["skipped"]}
    skipped = [{"video_id": s["video_id"], "reason": s["reason"]} for _, s in sorted(skipped_by_clip.items())]
    bad = set(skipped_by_clip)
    kept = [(i, r) for i, r in enumerate(rows) if i not in bad]
    if not kept:
        raise DataError(f"no clip of {ds_dir.name} could be decoded (first reason: {skipped[0]['reason']})")
    (work / "videos.txt").write_text("".join(f"{r.video_id}\n" for _, r in kept))
    (work / "labels.txt").write_text("".join(f"{classes.index(r.label)}\n" for _, r in kept))
    (work / "splits.txt").write_text("".join(f"{r.split}\n" for _, r in kept))
    (work / "rows.txt").write_text("".join(f"{i}\n" for i, _ in kept))
    meta = {"dataset": ds_dir.name, "backbone": backbone.name, "shape": [len(kept), v, *view_shape],
            "dtype": "float16", "cache": cache, "temporal_views": temporal_views, "spatial_views": spatial_views,
            "device": device.type, "classes": classes, "skipped": skipped}
    (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for path in work.glob("progress-*.json"):
        path.unlink()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(work, out_dir)
    return meta


# ---------------------------------------------------------------------------------------------
# reading m


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

    def split(self, name: str) -> np.ndarray:
        idx = np.nonzero(self.splits == name)[0]
        if len(idx) == 0:
            raise DataError(f"{self.meta['dataset']} has no clips in split {name!r} "
                            f"(splits present: {sorted(set(map(str, self.splits)))})")
        return idx

    def load(self, indices, views) -> np.ndarray:
        """float16 m (B, T', h, w, D) of clips `indices`, view views[k] for clip k (or one view for all)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        views = np.broadcast_to(np.asarray(views, dtype=np.int64), indices.shape)
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
            self.rows = np.arange(len(rows))
            self.classes = classes
            pre = backbone.preprocess
            probe = frames_to_m(backbone, np.zeros((1, pre.frames, pre.size, pre.size, 3), np.uint8), device)
            self.meta = {"dataset": self.ds_dir.name, "shape": [len(rows), temporal_views * spatial_views,
                                                                *probe.shape[1:]]}
        self.clips = ClipViews(self.ds_dir, self.paths, backbone.preprocess, temporal_views, spatial_views)

    def load(self, indices, views) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        views = np.broadcast_to(np.asarray(views, dtype=np.int64), indices.shape)
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


# ---------------------------------------------------------------------------------------------
# batches for training and evaluation: index plans drawn in the main process, m loaded by workers


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
