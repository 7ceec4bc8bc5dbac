"""The `tiny` backbone's pretraining on the pretraining corpus's coarse label (the analogue of a K710
checkpoint). Its own module, so that editing the stage-1/2 loops (train/align.py, train/finetune.py) never retrains the backbone."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fourtier.config.base import OptimSettings
from fourtier.train.optim import make_optimizer, seed_everything


def pretrain_backbone(model, frames, targets: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                      to_tensor, s: OptimSettings, seed: int, flips: bool = True, time_reversal: bool = True) -> dict:
    """frames: decoded clips on disk (`FrameStore`: load(indices, views) -> uint8 (B, T, S, S, 3), n_views), read
    a batch at a time; targets (N, heads) int. Random view, and (unless switched off) horizontal flip and time
    reversal per sample: the coarse pretraining label does not depend on either. The coin flips are drawn either
    way, so switching one augmentation off leaves every other draw as it was."""
    gen = seed_everything(seed)
    steps = math.ceil(len(train_idx) / s.batch_size)
    opt, sched = make_optimizer(model.parameters(), s, steps)
    loss_fn = nn.CrossEntropyLoss()
    y = torch.from_numpy(targets).long()
    history = []
    for epoch in range(s.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        total = 0.0
        bar = tqdm(range(steps), desc=f"backbone epoch {epoch + 1}/{s.epochs}", dynamic_ncols=True, mininterval=1.0)
        for step in bar:
            idx = order[step * s.batch_size:(step + 1) * s.batch_size]
            views = torch.randint(frames.n_views, (len(idx),), generator=gen).numpy()
            x = to_tensor(frames.load(idx, views))
            flip = (torch.rand(len(idx), generator=gen) < 0.5) & flips
            x[flip] = x[flip].flip(-1)  # labels (motion family, shape) do not depend on left/right
            backwards = (torch.rand(len(idx), generator=gen) < 0.5) & time_reversal
            x[backwards] = x[backwards].flip(1)  # nor on the direction of time: rise/fall, grow/shrink share a family
            outputs = model(x)
            loss = sum(loss_fn(out, y[idx, h]) for h, out in enumerate(outputs))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
        accuracy = evaluate_backbone(model, frames, targets, val_idx, to_tensor, s.batch_size)
        history.append({"epoch": epoch + 1, "loss": total / steps, **accuracy})
        print(f"  epoch {epoch + 1}: loss {total / steps:.3f}, held-out accuracy " +
              ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    return {"history": history, **history[-1]}


@torch.inference_mode()
def evaluate_backbone(model, frames, targets, idx, to_tensor, batch_size) -> dict:
    model.eval()
    correct = np.zeros(targets.shape[1])
    for start in range(0, len(idx), batch_size):
        batch = idx[start:start + batch_size]
        probs = None
        for v in range(frames.n_views):  # multi-view: average softmax
            out = [o.softmax(-1) for o in model(to_tensor(frames.load(batch, v)))]
            probs = out if probs is None else [p + o for p, o in zip(probs, out)]
        for h, p in enumerate(probs):
            correct[h] += (p.argmax(-1).numpy() == targets[batch, h]).sum()
    return {f"head{h}_accuracy": float(c / len(idx)) for h, c in enumerate(correct)}
