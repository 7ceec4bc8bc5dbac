"""Arrays larger than memory: fixed-shape rows stored in .npy shards of a bounded size.

Rows are written by position with `pwrite` and read by position with `pread`, never through a memory map,
so a process holds only the rows it asked for: memory is bounded by the batch, whatever the array's size
(a memory map would count every page touched in the process's resident memory). Each shard is a plain
.npy file (`np.load(path, mmap_mode="r")` opens it), and `<name>.json` beside them says how rows map to
shards. A few large files keep DVC's hashing cheap even for 10^6 clips.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fourtier.errors import DataError


def rows_per_shard(row_bytes: int, shard_mb: int) -> int:
    return max(1, (shard_mb << 20) // max(1, row_bytes))


def shard_name(name: str, k: int) -> str:
    return f"{name}-{k:05d}.npy"


def _header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


class ShardedArray:
    """Rows of shape `row_shape` and `dtype` in shards of `per_shard` rows under `directory`.

    `create` lays out empty (zero) shards; `write(start, rows)` and `read(positions)` work by row position
    from any process (the file descriptors are reopened after a fork)."""

    def __init__(self, directory: Path, name: str, n_rows: int, row_shape: tuple[int, ...], dtype, per_shard: int):
        self.directory, self.name = Path(directory), name
        self.n_rows, self.row_shape, self.dtype = int(n_rows), tuple(int(s) for s in row_shape), np.dtype(dtype)
        self.per_shard = int(per_shard)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.n_shards = max(1, -(-self.n_rows // self.per_shard))
        self._fds: dict[int, int] = {}
        self._offset: dict[int, int] = {}  # where the data starts in each shard (after the .npy header)
        self._pid = os.getpid()
        self.writable = False

    # -- layout --------------------------------------------------------------------------------
    def shard_rows(self, k: int) -> int:
        return min(self.per_shard, self.n_rows - k * self.per_shard)

    def path(self, k: int) -> Path:
        return self.directory / shard_name(self.name, k)

    def describe(self) -> dict:
        return {"rows": self.n_rows, "row_shape": list(self.row_shape), "dtype": self.dtype.str,
                "rows_per_shard": self.per_shard, "shards": [shard_name(self.name, k) for k in range(self.n_shards)]}

    def create(self) -> None:
        """Empty shards of the final size (sparse files: unwritten rows read as zeros)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for k in range(self.n_shards):
            rows = max(0, self.shard_rows(k))
            header = _header((rows, *self.row_shape), self.dtype)
            with open(self.path(k), "wb") as fh:
                fh.write(header)
                fh.truncate(len(header) + rows * self.row_bytes)
        (self.directory / f"{self.name}.json").write_text(json.dumps(self.describe(), indent=1) + "\n")
        self.writable = True

    @classmethod
    def open(cls, directory: Path, name: str, writable: bool = False) -> "ShardedArray":
        info = json.loads((Path(directory) / f"{name}.json").read_text())
        array = cls(directory, name, info["rows"], tuple(info["row_shape"]), np.dtype(info["dtype"]), info["rows_per_shard"])
        array.writable = writable
        return array

    # -- io --------------------------------------------------------------------------------------
    def _fd(self, k: int) -> int:
        if self._pid != os.getpid():  # a DataLoader worker after fork: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if k not in self._fds:
            self._fds[k] = os.open(self.path(k), os.O_RDWR if self.writable else os.O_RDONLY)
            with open(self.path(k), "rb") as fh:
                np.lib.format.read_magic(fh)
                np.lib.format.read_array_header_1_0(fh)
                self._offset[k] = fh.tell()
        return self._fds[k]

    def write(self, start: int, rows: np.ndarray) -> None:
        """rows (n, *row_shape) at positions start .. start + n - 1."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape or start < 0 or start + len(rows) > self.n_rows:
            raise ValueError(f"rows {rows.shape} at {start} do not fit {self.n_rows} x {self.row_shape}")
        i = 0
        while i < len(rows):
            pos = start + i
            k, local = divmod(pos, self.per_shard)
            n = min(len(rows) - i, self.per_shard - local)
            fd = self._fd(k)
            os.pwrite(fd, rows[i:i + n].tobytes(), self._offset[k] + local * self.row_bytes)
            i += n

    def read(self, positions) -> np.ndarray:
        """The rows at `positions` (any order, repeats allowed), as one (n, *row_shape) array."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        out = np.empty((len(positions), *self.row_shape), self.dtype)
        flat = out.reshape(len(positions), -1).view(np.uint8)
        for j, pos in enumerate(positions):
            if not 0 <= pos < self.n_rows:
                raise IndexError(f"row {pos} of {self.n_rows}")
            k, local = divmod(int(pos), self.per_shard)
            data = os.pread(self._fd(k), self.row_bytes, self._offset[k] + local * self.row_bytes)
            flat[j] = np.frombuffer(data, np.uint8)
        return out

    def sync(self) -> None:
        for fd in self._fds.values():
            os.fsync(fd)

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self):  # picklable for spawned workers: descriptors are reopened there
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, -1
        return state


class NpyFile:
    """One .npy file written in place by position with pwrite (sparse: unwritten parts read as zeros), so a
    writer never holds the array, nor its pages, in memory. `write(prefix, values)` fills the leading
    elements of the sub-array at index `prefix` (a tuple of leading indices) in C order."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        header = _header(self.shape, self.dtype)
        with open(self.path, "wb") as fh:
            fh.write(header)
            fh.truncate(len(header) + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize)
        self.offset = len(header)
        self.fd = os.open(self.path, os.O_RDWR)

    @classmethod
    def open(cls, path: Path, shape: tuple[int, ...], dtype) -> "NpyFile":
        """The file another process created, opened to write in place (not re-created)."""
        array = cls.__new__(cls)
        array.path, array.shape, array.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        array.offset = len(_header(array.shape, array.dtype))
        array.fd = os.open(array.path, os.O_RDWR)
        return array

    def write(self, prefix: tuple[int, ...], values: np.ndarray) -> None:
        inner = int(np.prod(self.shape[len(prefix):], dtype=np.int64))
        start = int(np.ravel_multi_index(prefix, self.shape[:len(prefix)])) * inner if prefix else 0
        data = np.ascontiguousarray(values, dtype=self.dtype)
        if data.size > inner:
            raise ValueError(f"{data.size} values do not fit the {inner} at {prefix} of {self.shape}")
        os.pwrite(self.fd, data.tobytes(), self.offset + start * self.dtype.itemsize)

    def close(self) -> None:
        os.close(self.fd)


class NpyRows:
    """A .npy file read by row with pread, never through a memory map: a reader holds only the rows it asked
    for (a memory map would keep every page it touched in the process's resident memory, the whole file after
    an epoch). Indexing as numpy does for what stage 1 asks: rows[positions], rows[positions, col] and
    rows[positions, col, :length], positions in any order, repeats allowed; a copy, not a view."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran:
            raise DataError(f"{self.path} is in Fortran order; re-run the stage that wrote it (dvc repro)")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.fd = os.open(self.path, os.O_RDONLY)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _descriptor(self) -> int:
        if self._pid != os.getpid():  # a forked worker: its own descriptor (offsets are per call anyway)
            self.fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self.fd

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        prefix = len(key) == 3 and isinstance(key[2], slice) and key[2].start in (None, 0) and key[2].step in (None, 1)
        if not (len(key) in (1, 2) or prefix) or (len(key) > 1 and not 0 <= int(key[1]) < self.shape[1]):
            raise IndexError(f"{self.path} is read as [positions], [positions, col] or [positions, col, :n], "
                             f"not {key!r}")
        positions = key[0]
        if isinstance(positions, slice):
            positions = np.arange(*positions.indices(self.shape[0]))
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        sub_shape, skip = self.shape[1:], 0  # what is read of each row, from `skip` bytes into it
        if len(key) > 1:
            sub_shape = self.shape[2:]
            skip = int(key[1]) * int(np.prod(sub_shape, dtype=np.int64)) * self.dtype.itemsize
        if prefix:  # [r, col, :n] is contiguous
            stop = sub_shape[0] if key[2].stop is None else max(0, min(sub_shape[0], key[2].stop))
            sub_shape = (stop, *sub_shape[1:])
        count = int(np.prod(sub_shape, dtype=np.int64)) * self.dtype.itemsize
        out = np.empty((len(positions), *sub_shape), self.dtype)
        flat = out.reshape(len(positions), count // self.dtype.itemsize).view(np.uint8)
        fd = self._descriptor()
        for j, pos in enumerate(positions.tolist()):
            if not 0 <= pos < self.shape[0]:
                raise IndexError(f"row {pos} of {self.shape[0]} in {self.path}")
            flat[j] = np.frombuffer(os.pread(fd, count, self.offset + pos * row_bytes + skip), np.uint8)
        return out

    def close(self) -> None:
        if self._pid == os.getpid():
            os.close(self.fd)

    def __getstate__(self):  # picklable for spawned workers: the descriptor is reopened there
        state = dict(self.__dict__)
        state["_pid"] = -1
        return state
