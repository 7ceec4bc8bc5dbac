"""Keyframe tiles: K frames at equal time intervals, side by side in one image c (paper §3.2).

c has shape H x (W*K) x 3, with H the tile height and W the panel width that keeps the clip's display
aspect ratio (square pixels, rotation applied). The index records, per video, the frame indices and
timestamps used, or the reason the video was skipped. A video that cannot be read is never replaced
by a black or partial tile.
"""
from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fourtier.config.caption import TileParams
from fourtier.data.contract import read_annotations
from fourtier.data.store import ItemReader, ItemWriter, local_file
from fourtier.errors import DataError, VideoError
from fourtier.runtime.parallel import map_progress
from fourtier.video import media

INDEX_COLUMNS = ("video_id", "status", "location", "frame_indices", "timestamps", "n_frames", "reader",
                 "panel_width", "height", "reason")
JPEG_MAX_SIDE = 65500  # libjpeg's largest image side (Pillow refuses wider JPEGs)


def panel_width(display_size: tuple[int, int], height: int) -> int:
    dw, dh = display_size
    return max(1, round(height * dw / dh))


def make_tile(frames: list[np.ndarray], display_size: tuple[int, int], height: int) -> np.ndarray:
    """Resize each keyframe to (panel width, height), which also makes its pixels square, and concatenate."""
    width = panel_width(display_size, height)
    if width * len(frames) > JPEG_MAX_SIDE:  # a setting no video of this shape can meet: stop, do not skip
        raise DataError(f"a tile of K={len(frames)} panels of {width} x {height} px ({display_size[0]}:{display_size[1]} "
                        f"video) would be {width * len(frames):,} px wide, over JPEG's limit of {JPEG_MAX_SIDE:,}; "
                        "lower K or tile.height in params.yaml")
    panels = [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]
    return np.concatenate(panels, axis=1)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    try:
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    except (OSError, ValueError) as exc:  # Pillow's own limits: say what and how, not where inside Pillow
        raise DataError(f"cannot encode a {image.shape[1]} x {image.shape[0]} px tile as JPEG ({exc}); lower K or "
                        "tile.height in params.yaml") from None
    return buf.getvalue()


@dataclass
class TileResult:
    video_id: str
    jpeg: bytes | None
    row: dict


def tile_video(path: str | Path, k: int, height: int, quality: int, video_id: str = "") -> TileResult:
    """Tile one video; a VideoError becomes a skipped row with the reason."""
    try:
        key = media.read_keyframes(path, k)
        tile = make_tile(key.frames, key.display_size, height)
        row = {"status": "ok", "frame_indices": ";".join(map(str, key.indices)),
               "timestamps": ";".join(f"{t:.4f}" for t in key.timestamps), "n_frames": key.n_frames,
               "reader": key.reader, "panel_width": tile.shape[1] // k, "height": height, "reason": ""}
        return TileResult(video_id, encode_jpeg(tile, quality), row)
    except VideoError as exc:
        row = {"status": "skipped", "frame_indices": "", "timestamps": "", "n_frames": "", "reader": "",
               "panel_width": "", "height": "", "reason": str(exc)}
        return TileResult(video_id, None, row)


def _tile_job(job) -> TileResult:
    video_id, ds_dir, location, k, height, quality = job
    with local_file(ds_dir, location) as path:
        result = tile_video(path, k, height, quality, video_id)
    result.row["reason"] = result.row["reason"].replace(str(path), location)  # never a temporary file's name
    return result


def tile_dataset(ds_dir: Path, out_dir: Path, k: int, params: TileParams, workers: int) -> dict:
    """Tile every video of a downloaded dataset into out_dir (index.csv, summary.json, items or shards)."""
    ds_dir, out_dir = Path(ds_dir), Path(out_dir)
    annotations = read_annotations(ds_dir)
    if not annotations:
        raise DataError(f"{ds_dir}/annotations.csv lists no videos")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(a.video_id, ds_dir, a.path, k, params.height, params.jpeg_quality) for a in annotations]
    start = time.perf_counter()
    skipped, tiled = [], 0
    partial = out_dir / "index.csv.partial"  # the index is written as the tiles come, renamed when whole
    with ItemWriter(out_dir, len(jobs), params.shard_above, params.shard_size) as writer, \
            open(partial, "w", newline="") as fh:
        writer_csv = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS)
        writer_csv.writeheader()
        for result in map_progress(_tile_job, jobs, workers, desc=f"tile {ds_dir.name}"):
            location = writer.put(f"{result.video_id}.jpg", result.jpeg) if result.jpeg else ""
            row = {"video_id": result.video_id, "location": location, **result.row}
            writer_csv.writerow(row)
            if row["status"] == "ok":
                tiled += 1
            else:
                skipped.append({"video_id": row["video_id"], "reason": row["reason"]})
    partial.replace(out_dir / "index.csv")
    seconds = time.perf_counter() - start
    if tiled == 0:
        raise DataError(f"no video of {ds_dir.name} could be tiled; first reasons: "
                        + "; ".join(f"{s['video_id']}: {s['reason']}" for s in skipped[:3]))
    summary = {"dataset": ds_dir.name, "K": k, "height": params.height, "tiled": tiled,
               "skipped": len(skipped), "skipped_videos": skipped, "sharded": writer.sharded}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["seconds"] = seconds
    return summary


def read_tile_index(tile_dir: Path) -> list[dict]:
    return list(iter_tile_index(tile_dir))


def iter_tile_index(tile_dir: Path) -> Iterator[dict]:
    """index.csv's rows one at a time (10^6 of them at K710's size)."""
    path = Path(tile_dir) / "index.csv"
    if not path.exists():
        raise DataError(f"{path} not found: run the tile stage first (dvc repro)")
    with open(path, newline="") as fh:
        yield from csv.DictReader(fh)


def load_tile(tile_dir: Path, location: str, reader: ItemReader | None = None) -> np.ndarray:
    data = (reader or ItemReader(tile_dir)).get(location)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
