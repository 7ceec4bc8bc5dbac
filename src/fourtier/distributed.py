"""Data parallelism for `align` and `finetune` under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU).

torch's own machinery: `DistributedDataParallel` wraps the trained modules (bucketed gradient all-reduce,
overlapped with the backward pass) and `torch.distributed.nn.functional.all_gather` gathers the stage-1
embeddings with autograd, so InfoNCE sees every in-batch negative. Every rank draws the same global batch
(same seed) and loads only its own shard of it (`shard`): a distributed sampler that keeps the global batch
exactly what one process would see. Without torchrun (WORLD_SIZE unset) everything here is a no-op.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def setup(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


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


def gather_state(state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a CPU byte tensor (an RNG state), in rank order."""
    if world() == 1:
        return [state]
    parts = [torch.empty_like(state) for _ in range(world())]
    dist.all_gather_object(parts, state)
    return parts


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
