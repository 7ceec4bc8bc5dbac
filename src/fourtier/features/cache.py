"""The frozen backbone's feature map m, per clip and per view: computed once, streamed, cached in float16.

Both training stages freeze the backbone (paper §3.2), so caching m is the main speed lever. Nothing here
holds a dataset in memory: clips are decoded by DataLoader worker processes, a batch at a time, the backbone
runs on `runtime.device`, and each batch of m is written to its place on disk as it completes.

The cache, data/features/<ds>/, holds:
- m-00000.npy, ... (rows of one view each: (T', h, w, D) float16; clip i's view v is row rows[i] * V + v), in
  shards of at most `features.shard_mb` (m.json says how rows map to shards);
- videos.txt, labels.txt (class index), splits.txt, rows.txt: one line per readable clip;
  folds.txt too for a dataset run on several official splits (its role in each);
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

import numpy as np
import torch
from tqdm import tqdm

from fourtier.data.contract import read_annotations, read_classes
from fourtier.data.shards import ShardedArray, rows_per_shard
from fourtier.errors import DataError
from fourtier.features.decode import ClipViews, Ranges, clip_loader, frames_to_m, probe_view_shape
from fourtier.runtime import distributed
from fourtier.runtime.heap import release_free_heap


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
    shape = probe_view_shape(backbone, device)
    settings = {"temporal_views": temporal_views, "spatial_views": spatial_views, "batch_size": batch_size,
                "shard_mb": shard_mb, "cache": cache, "device": device.type}
    work = out_dir.parent / f".{out_dir.name}.partial"
    key = _run_key(rows, backbone, settings)
    per_shard = rows_per_shard(int(np.prod(shape)) * 2, shard_mb)
    store = ShardedArray(work, "m", n * v, shape, np.float16, per_shard)
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
            release_free_heap()  # the batch's freed buffers back to the system: the peak stays that of a batch
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
    if any(r.folds for _, r in kept):  # roles in several official splits (fourtier.data.contract)
        (work / "folds.txt").write_text("".join(f"{r.folds}\n" for _, r in kept))
    meta = {"dataset": ds_dir.name, "backbone": backbone.name, "shape": [len(kept), v, *shape],
            "dtype": "float16", "cache": cache, "temporal_views": temporal_views, "spatial_views": spatial_views,
            "device": device.type, "classes": classes, "skipped": skipped}
    (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for path in work.glob("progress-*.json"):
        path.unlink()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(work, out_dir)
    return meta
