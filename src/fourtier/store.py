"""Per-item binary outputs (tiles now, features later): one file per item, or zip shards when large.

A dataset of 10^5-10^6 clips must not become as many DVC-tracked files: status and push would crawl.
Above `shard_above` items the writer packs items into zip shards of `shard_size` members (stored, not
compressed: JPEG and float16 arrays gain nothing). The location written to the index says where an
item is: `items/<name>` or `shards/shard-00000.zip:<name>`.
"""
from __future__ import annotations

import zipfile
from pathlib import Path


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
        if self._count % self.shard_size == 0:
            self._close_shard()
            self._zip_name = f"shards/shard-{self._count // self.shard_size:05d}.zip"
            self._zip = zipfile.ZipFile(self.out_dir / self._zip_name, "w", zipfile.ZIP_STORED)
        # a fixed timestamp keeps shard bytes identical across runs, so DVC sees no change
        self._zip.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        self._count += 1
        return f"{self._zip_name}:{name}"

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
