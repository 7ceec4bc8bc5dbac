"""Seeds and the optimiser every training loop uses: AdamW with linear warm-up then cosine decay (paper
Tables A2/A3)."""
from __future__ import annotations

import math
import random

import numpy as np
import torch

from fourtier.config.base import OptimSettings


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(params, s: OptimSettings, steps_per_epoch: int):
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=s.betas)
    sched = cosine_with_warmup(opt, int(s.warmup_epochs * steps_per_epoch), s.epochs * steps_per_epoch)
    return opt, sched


def log_epoch(live, name: str, value: float) -> None:
    """One point of a dvclive curve per epoch (live is None on non-main ranks and in tests)."""
    if live is not None:
        live.log_metric(name, value)
        live.next_step()
