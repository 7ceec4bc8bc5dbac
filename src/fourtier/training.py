"""Training loops: stage 1 (align) and stage 2 (finetune), and multi-view prediction.

Plain loops with AdamW, warm-up then cosine decay (fourtier.optim), a progress bar, seeds from params, and
metrics that the stages write. Settings are the paper's (Tables A2/A3) scaled for a CPU; params.yaml documents
both. The `tiny` backbone's pretraining is in fourtier.pretrain. Stage 1 reads its text targets a batch at a
time (PooledTargets, TokenTargets), so its memory is bounded by the batch, not the corpus.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fourtier import checkpoints, distributed
from fourtier.features import batch_loader
from fourtier.optim import make_optimizer, seed_everything
from fourtier.params import PROMPT_IDS, OptimSettings


# ---------------------------------------------------------------------------------------------
# stage 1: align the feature processors with the text embeddings (InfoNCE)

def caption_groups(pooled: np.ndarray) -> np.ndarray:
    """Group id per row: rows with identical text embeddings (identical answers) share a group."""
    _, groups = np.unique(np.ascontiguousarray(pooled).view(np.dtype((np.void, pooled.dtype.itemsize * pooled.shape[1]))),
                          return_inverse=True)
    return groups.reshape(-1)


def info_nce(z: torch.Tensor, e, groups: torch.Tensor, logit_scale: torch.Tensor, objective: str = "pooled") -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives, on the objective's video-to-text scores (pairwise_scores) of a
    batch. Videos whose answers are identical are all positives (soft targets), so the same sentence is never
    pushed away from itself."""
    logits = pairwise_scores(z, e, objective, scale=logit_scale.exp().clamp(max=100))
    same = (groups[:, None] == groups[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-targets * logits.log_softmax(1), 1).mean() + torch.sum(-targets * logits.t().log_softmax(1), 1).mean())


def token_scores(z: torch.Tensor, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The token-wise score of objective `tokens` (text to video, as in FILIP): score[j, k] is the mean, over the
    tokens of text k, of each token's best cosine with any token of video j. z (B, U, P) and e (C, L, P) are unit
    vectors, mask (C, L) marks real text tokens. Returns (B, C)."""
    best = torch.einsum("bup,clp->bclu", z, e).amax(-1)  # (B, C, L); max's backward keeps indices only
    weight = mask.to(best.dtype)
    return (best * weight).sum(-1) / weight.sum(-1).clamp(min=1)


def pairwise_scores(z: torch.Tensor, e, objective: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Video-to-text scores (B, C): cosines of pooled vectors, or token_scores for e = (tokens, mask); times
    `scale` when given (InfoNCE's logits). Pooled scores scale z before the product: B x P multiplies, not B x C."""
    if objective == "tokens":
        scores = token_scores(z, *e)
        return scores if scale is None else scale * scores
    return z @ e.t() if scale is None else (scale * z) @ e.t()


class TokenTargets:
    """Token-level e_i for the token-wise objective, read from the embed stage's memory-mapped arrays a batch at
    a time, so memory is bounded by the batch. rows[i]: the embeddings row of the source's clip i (the shuffled
    control permutes it)."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, rows: np.ndarray):
        self.tokens, self.mask, self.rows = tokens, mask, np.asarray(rows)

    def batch(self, idx: np.ndarray, col: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit token vectors (n, L, P) and mask (n, L) of prompt column `col` for clips idx, trimmed to the
        longest answer among them (padding costs compute in token_scores)."""
        rows = self.rows[np.asarray(idx)]
        order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads from the memory map
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        mask = np.asarray(self.mask[rows[order], col])[back]
        length = max(1, int(mask.any(0).nonzero()[0].max(initial=0)) + 1)
        tokens = torch.from_numpy(np.asarray(self.tokens[rows[order], col, :length])[back])
        # float16 goes to the device, which casts and normalises: on a GPU that work left the CPU thread that
        # feeds it, where it took half of each epoch (benchmarks/results/stage1_cost_h100.jsonl)
        e = torch.nn.functional.normalize(tokens.to(device).float(), dim=-1)
        return e, torch.from_numpy(mask[:, :length]).to(device)


class PooledTargets:
    """Pooled text embeddings (the embed stage's (N, 4, P) float16) for stage 1, read a batch at a time, so
    memory is bounded by the batch, not the corpus (3 KB per clip: 2 GB at K710's size). rows[i]: the embeddings
    row of the source's clip i (the shuffled control permutes it); by default clip i is row i."""

    def __init__(self, pooled, rows=None):
        self.pooled = pooled
        self.rows = np.arange(len(pooled)) if rows is None else np.asarray(rows)

    @property
    def dim(self) -> int:
        return self.pooled.shape[-1]

    def take(self, idx: np.ndarray, col: int | None = None) -> np.ndarray:
        """The float16 rows (n, 4, P), or of prompt column `col` (n, P), of clips idx in idx's order."""
        rows = self.rows[np.asarray(idx)]
        order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        part = self.pooled[rows[order]] if col is None else self.pooled[rows[order], col]
        return np.asarray(part)[back]

    def batch(self, idx: np.ndarray, cols: list[int], device: torch.device) -> list[torch.Tensor]:
        """Per prompt column in `cols`, the unit text embeddings (n, P) float32 of clips idx."""
        e = torch.from_numpy(np.asarray(self.take(idx)[:, cols], dtype=np.float32))
        # contiguous (n, prompts, P), as the whole array indexed by the batch was: the same strides, the same bytes
        return list(torch.nn.functional.normalize(e, dim=-1).contiguous().to(device).unbind(1))

    def groups(self, col: int, chunk: int = 4096) -> np.ndarray:
        """caption_groups of prompt column `col` over every clip, read `chunk` clips at a time: rows with the
        same bytes (identical answers) share an id, numbered in order of first appearance (the same partition
        as caption_groups; InfoNCE and retrieval only compare ids)."""
        import hashlib

        ids: dict[bytes, int] = {}
        out = np.empty(len(self.rows), np.int64)
        for start in range(0, len(self.rows), chunk):
            part = np.ascontiguousarray(self.take(np.arange(start, min(start + chunk, len(self.rows))), col))
            for j, row in enumerate(part):
                digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
                out[start + j] = ids.setdefault(digest, len(ids))
        return out


def as_pooled_targets(pooled) -> PooledTargets:
    """PooledTargets as given, or over an array (N, 4, P) aligned with the source's clips."""
    return pooled if isinstance(pooled, PooledTargets) else PooledTargets(pooled)


def retrieval(z: np.ndarray, e: np.ndarray, groups: np.ndarray, ks=(1, 5), chunk: int = 2048, score=None) -> dict:
    """Video-to-text retrieval: a hit when one of the top-k texts is the video's own answer (or identical to it).
    Chance is exact for a random ranking: 1 - C(n - g, k) / C(n, k), g = copies of the right text.
    Similarities are ranked `chunk` videos at a time: memory is chunk x n, not n x n (66,000 held-out K710
    clips would need 17 GB at once)."""
    from math import comb

    n = len(z)
    score = score or (lambda z_chunk: z_chunk @ e.T)  # score(z_chunk) -> (chunk, n): token_scores for `tokens`
    top = np.concatenate([np.argsort(-score(z[start:start + chunk]), axis=1)[:, :max(ks)]
                          for start in range(0, n, chunk)])
    out = {}
    for k in ks:
        hits = (groups[top[:, :k]] == groups[:, None]).any(1)
        sizes = np.bincount(groups)[groups]
        chance = np.mean([1 - comb(n - g, k) / comb(n, k) for g in sizes])
        out[f"R@{k}"] = float(hits.mean())
        out[f"chance_R@{k}"] = float(chance)
    return out


class EpochPlan:
    """The batches of every epoch: clip order and one random view per clip, drawn from (seed, epoch) alone, so
    a resumed run draws exactly the batches it would have drawn. Batches smaller than `min_batch` are dropped.
    Each batch's clips are sorted (neighbouring rows of the feature shards)."""

    def __init__(self, train_idx: np.ndarray, n_views: int, batch_size: int, seed: int, min_batch: int = 1):
        self.train_idx, self.n_views, self.batch_size = np.asarray(train_idx), n_views, batch_size
        self.seed, self.min_batch = seed, min_batch

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=gen).numpy()]
        batches = []
        for start in range(0, len(order), self.batch_size):
            idx = np.sort(order[start:start + self.batch_size])
            if len(idx) >= self.min_batch:
                batches.append((idx, torch.randint(self.n_views, (len(idx),), generator=gen).numpy()))
        return batches

    @property
    def steps(self) -> int:
        n, b = len(self.train_idx), self.batch_size
        return n // b + (1 if n % b >= self.min_batch else 0)

    def keys(self, first_epoch: int, epochs: int):
        """This rank's (clips, views) of every batch from `first_epoch` on, for the loader."""
        for epoch in range(first_epoch, epochs):
            for idx, views in self.epoch(epoch):
                part = distributed.shard(len(idx))
                yield idx[part], views[part]


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

    model.eval()
    pooled = as_pooled_targets(pooled)
    zs = {p: [] for p in model.prompts}
    batches = iter(batch_loader(source, eval_keys(idx, source.n_views, batch_size), workers, device))
    for start in range(0, len(idx), batch_size):
        z = None
        for _ in range(source.n_views):  # average the views' embeddings
            out = model.align_embeddings(source.to_m(next(batches), device))
            z = out if z is None else {p: z[p] + out[p] for p in out}
        for p in zs:
            zs[p].append(torch.nn.functional.normalize(z[p], dim=-1).cpu().numpy())
    result = {}
    for p in model.prompts:
        col = PROMPT_IDS.index(p)
        held_out = pooled.take(idx, col)
        groups = caption_groups(held_out)
        if model.config.objective == "tokens":
            result[p] = retrieval(np.concatenate(zs[p]), None, groups, chunk=64,
                                  score=lambda z_chunk: token_scores_chunked(z_chunk, tokens, idx, col, device))
            continue
        e = np.asarray(held_out, dtype=np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True) + 1e-8
        result[p] = retrieval(np.concatenate(zs[p]), e, groups)
    return result


@torch.inference_mode()
def token_scores_chunked(z: np.ndarray, tokens: TokenTargets, idx: np.ndarray, col: int, device: torch.device,
                         chunk: int = 256) -> np.ndarray:
    """token_scores of videos z (B, U, P) against the texts of clips idx, `chunk` texts at a time: memory is
    B x chunk x L x U, whatever the number of texts."""
    z = torch.from_numpy(z).to(device)
    return torch.cat([token_scores(z, *tokens.batch(idx[start:start + chunk], col, device))
                      for start in range(0, len(idx), chunk)], 1).cpu().numpy()


def eval_keys(idx: np.ndarray, n_views: int, batch_size: int, starts=None):
    """Multi-view testing order: each chunk of clips once per view, view 0 first; `starts`: only the chunks
    that begin there (default: all)."""
    for start in (range(0, len(idx), batch_size) if starts is None else starts):
        chunk = np.asarray(idx[start:start + batch_size])
        for v in range(n_views):
            yield chunk, np.full(len(chunk), v)


# ---------------------------------------------------------------------------------------------
# stage 2: fine-tune integration + classifier on a target dataset (backbone and processors frozen)

def stage2_model(arm: str, prompts: list[str], dim: int, grid: tuple[int, int, int], n_classes: int, seed: int):
    """The model an arm starts stage 2 from. Every arm of a seed starts from the same classifier, the baseline's
    (drawn from the seed alone), and the integration starts at zero, so the arms of a seed differ only by their
    stage-1 processors: seeds are paired in initial weights as well as in data order. The baseline has no
    processors; the other arms load theirs from stage 1 (models/align/<arm>)."""
    from fourtier import paths
    from fourtier.errors import DataError
    from fourtier.models.ftp import FTP, FTPConfig, read_saved

    seed_everything(seed)
    baseline = FTP(FTPConfig(dim, grid, [], n_classes))
    if arm == "baseline":
        return baseline
    saved = paths.align_model(arm)
    if not saved.with_suffix(".safetensors").exists():
        raise DataError(f"{saved}.safetensors is missing: align trains the arms in finetune.arms; re-run align "
                        "(dvc repro)")
    model = FTP(FTPConfig(dim, grid, prompts, n_classes, processor=read_saved(saved)["config"].processor))
    model.classifier.load_state_dict(baseline.classifier.state_dict())
    model.load_parts(saved, ("processors",))
    return model


def mixup_draw(gen: torch.Generator, n: int, alpha: float, prob: float) -> tuple[float, torch.Tensor] | None:
    """Mixup of a global batch of n clips: (lambda, partner of each clip), or None for a batch left unmixed."""
    if alpha > 0 and torch.rand(1, generator=gen).item() < prob:
        lam = float(np.random.default_rng(int(torch.randint(2 ** 31, (1,), generator=gen))).beta(alpha, alpha))
        return lam, torch.randperm(n, generator=gen)
    return None


def stage2_keys(plan: EpochPlan, first_epoch: int, epochs: int, gen_state: torch.Tensor, alpha: float, prob: float):
    """This rank's loads for every stage-2 batch from `first_epoch` on: its shard of the batch, then (for a
    mixed batch, with several ranks) the mixup partners of that shard, wherever they sit in the global batch. The mixup draws
    come from a copy of the training loop's generator, drawn in the same order, so both see the same ones."""
    gen = torch.Generator()
    gen.set_state(gen_state)
    for epoch in range(first_epoch, epochs):
        for idx, views in plan.epoch(epoch):
            part = distributed.shard(len(idx))
            draw = mixup_draw(gen, len(idx), alpha, prob)
            if draw is None or distributed.world() == 1:  # one process has every partner in its batch already
                yield idx[part], views[part]
            else:
                partners = draw[1][part].numpy()
                yield np.concatenate([idx[part], idx[partners]]), np.concatenate([views[part], views[partners]])


def train_classifier(model, source, train_idx: np.ndarray, labels: np.ndarray, s: OptimSettings, seed: int,
                     label_smoothing: float, mixup_alpha: float, mixup_prob: float, checkpoint=None,
                     live=None, tag: str = "", desc: str = "finetune", device: torch.device = torch.device("cpu"),
                     workers: int = 0, on_epoch=None) -> list[dict]:
    """Stage 2 on clips `train_idx`; `labels` holds the class of every clip of the source (indexed like it).
    Mixup mixes feature maps m (the frozen backbone's output) and their labels across the global batch, and
    dropout draws the global batch's mask, from generators every rank shares: 1 or N ranks train the same
    experiment. `checkpoint` (a Path) is written after every epoch and resumed from if present, at any world
    size. on_epoch: called after every epoch (and once per epoch a resumed run skips) instead of this run's own
    progress bar."""
    gen = seed_everything(seed)  # mixup (gen) and dropout (the global generator): the same draws on every rank
    model.to(device)
    model.requires_grad_(False)
    trainable = model.stage2_parameters()
    for p in trainable:
        p.requires_grad_(True)
    trained = distributed.wrap(model, device)
    plan = EpochPlan(train_idx, source.n_views, s.batch_size, seed)
    opt, sched = make_optimizer(trainable, s, plan.steps)
    n_classes = model.config.n_classes
    y = torch.from_numpy(labels).long()
    start_epoch, history = 0, []
    state = checkpoints.load(checkpoint, device) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())  # dropout draws from the global generator
        if device.type == "cuda" and "cuda_rng" in state:  # or, on a GPU, from the device's
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        start_epoch, history = state["epoch"], state["history"]
        if distributed.is_main():
            print(f"  resuming {tag} from epoch {start_epoch}", flush=True)
        for past in history:  # the curve stays whole across the crash
            log_epoch(live, f"{tag}/loss", past["loss"])
            if on_epoch is not None:
                on_epoch()
    keys = stage2_keys(plan, start_epoch, s.epochs, gen.get_state(), mixup_alpha, mixup_prob)
    batches = iter(batch_loader(source, keys, workers, device))
    bar = tqdm(range(start_epoch, s.epochs), desc=desc, unit="epoch", dynamic_ncols=True,
               mininterval=1.0, initial=start_epoch, total=s.epochs,
               disable=on_epoch is not None or not distributed.is_main())
    for epoch in bar:
        trained.train()
        model.processors.eval()
        total = 0.0
        for idx, _ in plan.epoch(epoch):
            part = distributed.shard(len(idx))
            m = source.to_m(next(batches), device)  # this rank's shard (and its mixup partners)
            target = F_one_hot(y[idx[part]], n_classes) * (1 - label_smoothing) + label_smoothing / n_classes
            draw = mixup_draw(gen, len(idx), mixup_alpha, mixup_prob)
            if draw is not None:
                lam, perm = draw
                k = len(target)
                partner = F_one_hot(y[idx[perm[part]]], n_classes) * (1 - label_smoothing) + label_smoothing / n_classes
                partner_m = m[perm] if distributed.world() == 1 else m[k:]  # under DDP: loaded after the shard
                m = lam * m[:k] + (1 - lam) * partner_m
                target = lam * target + (1 - lam) * partner
            opt.zero_grad()
            total += classifier_backward(trained, m, target.to(device), len(idx), device)
            opt.step()
            sched.step()
        history.append({"epoch": epoch + 1, "loss": total / plan.steps})
        log_epoch(live, f"{tag}/loss", total / plan.steps)
        bar.set_postfix(loss=f"{total / plan.steps:.3f}")
        if checkpoint is not None:
            checkpoints.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "generator": gen.get_state(),
                              "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "history": history,
                              **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})},
                             checkpoint)
        if on_epoch is not None:
            on_epoch()
    return history


def classifier_backward(model, m_part: torch.Tensor, target_part: torch.Tensor, n: int,
                        device: torch.device = torch.device("cpu")) -> float:
    """Soft-target cross-entropy of a batch of n clips, of which this rank holds m_part; leaves the full batch's
    mean gradient on every rank. Returns the batch's mean loss. Dropout draws the global batch's mask."""
    with distributed.global_batch(n):
        shard_sum = torch.sum(-target_part * model(m_part).log_softmax(-1))
    # DistributedDataParallel averages the ranks' gradients: scale the shard's sum so the average is the mean
    (shard_sum * distributed.world() / n).backward()
    return distributed.sum_value(shard_sum.item() / n, device)


def log_epoch(live, name: str, value: float) -> None:
    """One point of a dvclive curve per epoch (live is None on non-main ranks and in tests)."""
    if live is not None:
        live.log_metric(name, value)
        live.next_step()


def F_one_hot(y: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, n).float()


@torch.inference_mode()
def predict(model, source, idx: np.ndarray, batch_size: int = 128, workers: int = 0) -> np.ndarray:
    """Multi-view testing: softmax averaged over every cached view (temporal clips x spatial crops)."""
    return over_views(lambda m: model(m).softmax(-1), model, source, idx, batch_size, workers)


@torch.inference_mode()
def classifier_features(model, source, idx: np.ndarray, batch_size: int = 128, workers: int = 0) -> np.ndarray:
    """The classifier's pooled features (before its linear layer), averaged over the cached views."""
    return over_views(lambda m: model.classifier.features(model.f(m)), model, source, idx, batch_size, workers)


def over_views(fn, model, source, idx: np.ndarray, batch_size: int, workers: int) -> np.ndarray:
    """fn over the views of clips idx, averaged. Under torchrun the chunks of batch_size clips are dealt out to
    the ranks and gathered: every chunk is computed as one process computes it (the same bytes), and every rank
    returns the whole result."""
    model.eval()
    dev = next(model.parameters()).device
    starts = list(range(0, len(idx), batch_size))[distributed.rank()::distributed.world()]
    batches = iter(batch_loader(source, eval_keys(idx, source.n_views, batch_size, starts), workers, dev))
    out = {}
    for start in starts:
        total = sum(fn(source.to_m(next(batches), dev)) for _ in range(source.n_views))
        out[start] = (total / source.n_views).cpu().numpy()
    parts = {start: value for shard in distributed.gather_objects(out) for start, value in shard.items()}
    return np.concatenate([parts[start] for start in sorted(parts)])
