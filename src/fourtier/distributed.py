"""Data parallelism for `align` and `finetune` under `torchrun --nproc_per_node N` (gloo on CPU, nccl on GPU).

Every rank uses the same seed, so every rank draws the same batches, views and mixup pairs; each rank runs
the forward and backward pass on its own shard of the batch, and gradients are summed across ranks, so the
optimiser takes the single-process step (this is what DistributedDataParallel does; it is written out here
because stage 1 calls the model through align_embeddings, not forward). Stage 1 gathers the shards'
embeddings with autograd, so InfoNCE still sees every in-batch negative. Without torchrun (WORLD_SIZE unset)
everything here is a no-op.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def setup() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def device() -> torch.device:
    """This rank's GPU when there is one (LOCAL_RANK under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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


class _Gather(torch.autograd.Function):
    """all_gather with a backward pass: each rank gets the gradient of the summed losses for its own shard."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        ctx.sizes = sizes
        padded = torch.cat([x, x.new_zeros((max(sizes) - len(x), *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[:rank()])
        return grad[start:start + ctx.sizes[rank()]], None


def gather(x: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's shard of a batch of n items, keeping gradients to the local shard.

    Shards may differ in size by one; they are padded for all_gather and trimmed after."""
    if world() == 1:
        return x
    return _Gather.apply(x, tuple(int(size) for size in np.diff(_bounds(n))))


def sum_gradients(params) -> None:
    if world() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def sum_value(value: float) -> float:
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
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
