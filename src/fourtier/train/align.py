"""Stage 1 (align): the feature processors and alignment heads trained with InfoNCE against the text
embeddings (paper §3.2); the backbone is frozen. Resumable per epoch, on 1 or N ranks."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fourtier.config.base import OptimSettings, PROMPT_IDS
from fourtier.evaluation.predict import over_views
from fourtier.evaluation.retrieval import retrieval, token_scores_chunked
from fourtier.features.batches import batch_loader
from fourtier.runtime import distributed
from fourtier.train import checkpoints
from fourtier.train.losses import caption_groups, info_nce
from fourtier.train.optim import log_epoch, make_optimizer, seed_everything
from fourtier.train.sampler import EpochPlan
from fourtier.train.targets import TokenTargets, as_pooled_targets


class AlignmentModel(nn.Module):
    """What stage 1 trains: the processors and alignment heads of an FTP model, and one InfoNCE temperature per
    prompt. Its forward is stage 1's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model):
        super().__init__()
        self.ftp = [model]  # not a submodule: only the stage-1 parts below are this module's parameters
        self.processors, self.align_heads = model.processors, model.align_heads
        self.logit_scale = nn.Parameter(torch.full((len(model.prompts),), math.log(1 / 0.07)))

    def forward(self, m: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.ftp[0].align_embeddings(m)


def train_alignment(model, source, train_idx: np.ndarray, val_idx: np.ndarray, pooled, s: OptimSettings,
                    seed: int, live=None, tag: str = "", device: torch.device = torch.device("cpu"),
                    workers: int = 0, on_epoch=None, tokens: TokenTargets | None = None, checkpoint=None) -> dict:
    """Stage 1: only processors and alignment heads train. pooled: (N, 4, P) aligned with source rows, or
    PooledTargets, read a batch at a time (with objective `tokens` it still says which answers are identical).
    tokens: the token-level e_i, required by objective `tokens`. Returns per-prompt retrieval on val_idx. on_epoch: called after every epoch instead of
    this run's own progress bar (a stage's bar shared by its runs). `checkpoint` (a Path) is written after
    every epoch and resumed from if present: the batches of an epoch come from (seed, epoch) alone and nothing
    else draws at random, so a resumed run, at any world size, takes the steps an uninterrupted one takes."""

    from fourtier.errors import DataError

    objective = model.config.objective
    pooled = as_pooled_targets(pooled)
    if objective == "pooled" and pooled.dim != model.config.text_dim:
        raise DataError(f"the text embeddings are {pooled.dim}-d but the alignment heads expect "
                        f"{model.config.text_dim}-d: the text encoder changed since the heads were built; "
                        "re-run embed and align (dvc repro)")
    if objective == "tokens" and tokens is None:
        raise DataError("align.objective is tokens but no token-level embeddings were given")
    if tokens is not None and tokens.tokens.shape[-1] != model.config.text_dim:
        raise DataError(f"the token embeddings are {tokens.tokens.shape[-1]}-d but the alignment heads expect "
                        f"{model.config.text_dim}-d; re-run embed and align (dvc repro)")
    seed_everything(seed)
    model.to(device)
    prompts = model.prompts
    cols = [PROMPT_IDS.index(p) for p in prompts]
    groups = {p: torch.from_numpy(pooled.groups(c)).to(device) for p, c in zip(prompts, cols)}
    stage1 = AlignmentModel(model).to(device)
    trained = distributed.wrap(stage1, device)
    plan = EpochPlan(train_idx, source.n_views, s.batch_size, seed, min_batch=2)
    opt, sched = make_optimizer(list(stage1.parameters()), s, plan.steps)
    start_epoch = 0
    state = checkpoints.load(checkpoint, device) if checkpoint is not None else None
    if state is not None:
        stage1.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"]
        if distributed.is_main():
            print(f"  resuming align {tag} from epoch {start_epoch}", flush=True)
        for _ in range(start_epoch):
            if on_epoch is not None:
                on_epoch()
    batches = iter(batch_loader(source, plan.keys(start_epoch, s.epochs), workers, device))
    bar = tqdm(range(start_epoch, s.epochs), desc=f"align {tag}".strip(), unit="epoch", dynamic_ncols=True,
               mininterval=1.0, initial=start_epoch, total=s.epochs,
               disable=on_epoch is not None or not distributed.is_main())
    for epoch in bar:
        trained.train()
        total = 0.0
        for idx, _ in plan.epoch(epoch):
            m_part = source.to_m(next(batches), device)  # this rank's shard of the batch
            e = [tokens.batch(idx, c, device) for c in cols] if objective == "tokens" else pooled.batch(idx, cols, device)
            opt.zero_grad()
            total += alignment_backward(trained, stage1.logit_scale, m_part, len(idx), e,
                                        {p: g[idx] for p, g in groups.items()}, objective)
            opt.step()
            sched.step()
        log_epoch(live, "align/loss", total / plan.steps)
        bar.set_postfix(loss=f"{total / plan.steps:.3f}")
        if checkpoint is not None:
            checkpoints.save({"model": stage1.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "epoch": epoch + 1}, checkpoint)
        if on_epoch is not None:
            on_epoch()
    return evaluate_alignment(model, source, val_idx, pooled, device=device, workers=workers, tokens=tokens)


def alignment_backward(stage1, logit_scale, m_part: torch.Tensor, n: int, e, groups: dict,
                       objective: str = "pooled") -> float:
    """InfoNCE of a batch of n clips, of which this rank holds m_part; leaves the full batch's gradient on
    every rank. e: per prompt, the batch's unit text embeddings: (n, P) pooled, or for objective `tokens`
    (tokens, mask). Returns the loss."""
    z_part = stage1(m_part)
    prompts = list(z_part)
    z = {p: distributed.gather(z_part[p], n) for p in prompts}  # every in-batch negative
    loss = sum(info_nce(z[p], e[j], groups[p], logit_scale[j], objective) for j, p in enumerate(prompts))
    # Every rank computes the same full-batch loss; all_gather's backward sums the ranks' gradients for the
    # local shard (world x the true one) and DistributedDataParallel averages over ranks: the exact gradient.
    loss.backward()
    return loss.item()


@torch.inference_mode()
def evaluate_alignment(model, source, idx: np.ndarray, pooled, batch_size: int = 256,
                       device: torch.device = torch.device("cpu"), workers: int = 0,
                       tokens: TokenTargets | None = None) -> dict:
    """Per-prompt video-to-text retrieval among the clips idx, each video's embedding averaged over its views,
    scored as the objective scores (cosine of pooled vectors, or token_scores). pooled: an array aligned with
    the source's clips, or PooledTargets; only the clips idx are read."""

    pooled = as_pooled_targets(pooled)
    prompts = model.prompts
    # the views' mean per prompt (stacked, as over_views averages one tensor); under torchrun each rank embeds
    # its share of the chunks and every rank gets all of them
    def embeddings(m: torch.Tensor) -> torch.Tensor:
        out = model.align_embeddings(m)
        return torch.stack([out[p] for p in prompts], 1)

    z_all = over_views(embeddings, model, source, idx, batch_size, workers)
    result = {}
    for j, p in enumerate(prompts):
        z = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(z_all[:, j])), dim=-1).numpy()
        col = PROMPT_IDS.index(p)
        held_out = pooled.take(idx, col)
        groups = caption_groups(held_out)
        if model.config.objective == "tokens":
            result[p] = retrieval(z, None, groups, chunk=64,
                                  score=lambda z_chunk: token_scores_chunked(z_chunk, tokens, idx, col, device))
            continue
        e = np.asarray(held_out, dtype=np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True) + 1e-8
        result[p] = retrieval(z, e, groups)
    return result
