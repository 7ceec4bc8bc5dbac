"""Several processes under torchrun (gloo on the CPU, nccl on GPUs): data parallelism for `align` and
`finetune`, and work split by rank for `features` and `evaluate`. fourtier.runtime.launch starts the processes.

torch's own machinery: `DistributedDataParallel` wraps the trained modules (bucketed gradient all-reduce,
overlapped with the backward pass) and `torch.distributed.nn.functional.all_gather` gathers the stage-1
embeddings with autograd, so InfoNCE sees every in-batch negative. Every rank draws the same global batch
(same seed) and loads only its own shard of it (`shard`): a distributed sampler that keeps the global batch
exactly what one process would see. Every random draw is of the global batch as well (mixup's pairs and
weights, dropout's masks: `global_batch`, `dropout`), so 1, 2 or 8 ranks train the same experiment up to
float rounding. Without torchrun (WORLD_SIZE unset) everything here is a no-op.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import socket

import numpy as np
import torch
import torch.distributed as dist

from fourtier.errors import FourtierError

_solo = False  # inside `solo()`: this rank works alone (one stage-2 run of its own)
_batch: tuple[int, slice] | None = None  # inside `global_batch(n)`: the global batch size and this rank's rows


def setup(device: torch.device, timeout_s: int = 1800) -> None:
    """Join the process group under torchrun; a collective that waits over timeout_s fails (see names_rank)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))


def names_rank(main):
    """Decorator for a stage's main: a failed collective (a rank died, or one waited past runtime.timeout_s)
    becomes a FourtierError that names this rank and its host, instead of a traceback from torch's internals."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (dist.DistError, RuntimeError) as exc:
            collective = isinstance(exc, dist.DistError) or any(
                word in str(exc) for word in ("gloo", "NCCL", "Timed out", "timed out", "Connection closed"))
            if not dist.is_initialized() or not collective:
                raise
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise FourtierError(
                f"rank {rank()} of {world()} on {socket.gethostname()}: a collective failed ({first}). Another "
                "rank died (its error is in the log above) or hung past runtime.timeout_s; run the same command "
                "again to resume from the last checkpoint") from None

    return wrapper


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() and not _solo else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() and not _solo else 0


def group_rank() -> int:
    """This process's rank in the whole group, also inside `solo()` (which work is its own)."""
    return dist.get_rank() if dist.is_initialized() else 0


def group_world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


@contextlib.contextmanager
def solo():
    """This rank trains a run of its own, as one process would (no DDP, no collectives): finetune's
    `runtime.stage2_parallel: runs`, where the arm x seed runs are spread over the ranks."""
    global _solo
    _solo = True
    try:
        yield
    finally:
        _solo = False


def is_main() -> bool:
    return rank() == 0


def _bounds(n: int) -> np.ndarray:
    return np.linspace(0, n, world() + 1).astype(int)


def shard(n: int) -> slice:
    """This rank's contiguous part of a batch of n items."""
    bounds = _bounds(n)
    return slice(int(bounds[rank()]), int(bounds[rank() + 1]))


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged across ranks), the module itself otherwise."""
    if world() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def gather(x: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's shard of a batch of n items, concatenated, with gradients flowing back to each shard.

    Shards may differ in size by one: they are padded for all_gather and trimmed after."""
    if world() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    sizes = np.diff(_bounds(n))
    padded = torch.cat([x, x.new_zeros((int(sizes.max()) - len(x), *x.shape[1:]))])
    return torch.cat([part[:size] for part, size in zip(all_gather(padded), sizes)])


def sum_value(value: float, device: torch.device) -> float:
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier() -> None:
    if dist.is_initialized() and not _solo:
        dist.barrier()


def gather_objects(value) -> list:
    """Every rank's value (picklable), in rank order; [value] with one process."""
    if world() == 1:
        return [value]
    values = [None] * world()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value):
    """Rank 0's value on every rank."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def global_batch(n: int):
    """Within it, this rank's forward sees rows shard(n) of a global batch of n clips: `dropout` draws the
    mask of all n rows (as one process would) and keeps this rank's."""
    global _batch
    _batch = (n, shard(n))
    try:
        yield
    finally:
        _batch = None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout whose mask does not depend on the world size: inside `global_batch`, the mask of the whole
    batch is drawn from the generator every rank shares and this rank's rows are kept. It computes what
    torch's CPU dropout computes (x times a Bernoulli(1 - p) mask divided by 1 - p: the same draws, the same
    bytes; tested), so one process gives the bytes it gave with nn.Dropout."""
    if not training or p == 0.0:
        return x
    n, part = _batch if _batch is not None else (len(x), slice(0, len(x)))
    noise = x.new_empty((n, *x.shape[1:])).bernoulli_(1 - p).div_(1 - p)
    if part != slice(0, n):
        noise = noise[part].clone()  # not a view: autograd would keep the whole batch's mask alive
    return x * noise


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
