"""Data parallelism for `align` and `finetune` under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU).

Every rank uses the same seed, so every rank draws the same batches; each rank runs the forward and
backward pass on its own shard of the batch, and gradients are summed across ranks, so the optimiser
takes the single-process step. Stage 1 gathers the shards' embeddings (with autograd) so InfoNCE still
sees every in-batch negative. Without torchrun (WORLD_SIZE unset) everything here is a no-op.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def setup() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def shard(n: int) -> slice:
    """This rank's contiguous part of a batch of n items."""
    bounds = np.linspace(0, n, world() + 1).astype(int)
    return slice(int(bounds[rank()]), int(bounds[rank() + 1]))


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's shard, keeping gradients to the local shard."""
    if world() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def sum_gradients(params) -> None:
    if world() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
