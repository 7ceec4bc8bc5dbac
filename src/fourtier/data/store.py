"""Per-item binary outputs (tiles, and videos of large datasets): one file per item, or zip shards when large.

A dataset of 10^5-10^6 clips must not become as many DVC-tracked files: status and push would crawl.
Above `shard_above` items the writer packs items into zip shards of `shard_size` members (stored, not
compressed: JPEG and video gain nothing, and a stored member is read at its offset without inflating). The
location written to the index says where an item is: `items/<name>` (or any relative path) or
`shards/shard-00000.zip:<name>`. `local_file` gives a path to either, for readers that need one (decord, ffmpeg).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# a fixed timestamp keeps shard bytes identical across runs, so DVC sees no change
_EPOCH = (1980, 1, 1, 0, 0, 0)


class ItemWriter:
    def __init__(self, out_dir: Path, total: int, shard_above: int, shard_size: int):
        self.out_dir = Path(out_dir)
        self.sharded = total > shard_above
        self.shard_size = shard_size
        self._zip: zipfile.ZipFile | None = None
        self._zip_name = ""
        self._count = 0
        (self.out_dir / ("shards" if self.sharded else "items")).mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes) -> str:
        if not self.sharded:
            (self.out_dir / "items" / name).write_bytes(data)
            return f"items/{name}"
        self._next_shard()
        self._zip.writestr(zipfile.ZipInfo(name, date_time=_EPOCH), data)
        self._count += 1
        return f"{self._zip_name}:{name}"

    def put_file(self, name: str, path: Path) -> str:
        """A file on disk as the next shard member, copied in blocks (a video need not fit in memory)."""
        self._next_shard()
        with open(path, "rb") as src, self._zip.open(zipfile.ZipInfo(name, date_time=_EPOCH), "w",
                                                     force_zip64=True) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        self._count += 1
        return f"{self._zip_name}:{name}"

    def _next_shard(self) -> None:
        if self._count % self.shard_size == 0:
            self._close_shard()
            self._zip_name = f"shards/shard-{self._count // self.shard_size:05d}.zip"
            self._zip = zipfile.ZipFile(self.out_dir / self._zip_name, "w", zipfile.ZIP_STORED)

    def _close_shard(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def close(self) -> None:
        self._close_shard()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ItemReader:
    """Reads items by location; keeps shards open between reads."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self._zips: dict[str, zipfile.ZipFile] = {}

    def get(self, location: str) -> bytes:
        if ":" not in location:
            return (self.out_dir / location).read_bytes()
        shard, name = location.split(":", 1)
        if shard not in self._zips:
            self._zips[shard] = zipfile.ZipFile(self.out_dir / shard)
        return self._zips[shard].read(name)

    def close(self) -> None:
        for z in self._zips.values():
            z.close()
        self._zips.clear()


@contextmanager
def open_item(root: Path, location: str) -> Iterator:
    """A binary file object reading the item at `location` under `root` (a file, or a shard member)."""
    if ":" not in location:
        with open(Path(root) / location, "rb") as fh:
            yield fh
        return
    shard, name = location.split(":", 1)
    with zipfile.ZipFile(Path(root) / shard) as zf, zf.open(name) as fh:
        yield fh


@contextmanager
def local_file(root: Path, location: str) -> Iterator[Path]:
    """A path to the item at `location` under `root`: the file itself, or a shard member copied to a temporary
    file with the member's suffix (decord and ffmpeg read paths; the copy costs far less than decoding it)."""
    if ":" not in location:
        yield Path(root) / location
        return
    fd, tmp = tempfile.mkstemp(prefix="fourtier-", suffix=Path(location.split(":", 1)[1]).suffix)
    try:
        with os.fdopen(fd, "wb") as dst, open_item(root, location) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield Path(tmp)
    finally:
        os.unlink(tmp)
