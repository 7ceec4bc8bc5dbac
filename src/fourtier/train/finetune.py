"""Stage 2 (finetune), per target dataset: the integration and classifier layers trained on the frozen
backbone and processors (paper §3.3), every arm of a seed from the same start. Resumable per epoch, on
1 or N ranks, with mixup and dropout drawn for the global batch."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from fourtier.config.base import OptimSettings
from fourtier.features.batches import batch_loader
from fourtier.runtime import distributed
from fourtier.train import checkpoints
from fourtier.train.optim import log_epoch, make_optimizer, seed_everything
from fourtier.train.sampler import EpochPlan


def stage2_model(arm: str, prompts: list[str], dim: int, grid: tuple[int, int, int], n_classes: int, seed: int,
                 head: str = "pooled"):
    """The model an arm starts stage 2 from. Every arm of a seed starts from the same classifier, the baseline's
    (drawn from the seed alone), and the integration starts at zero, so the arms of a seed differ only by their
    stage-1 processors: seeds are paired in initial weights as well as in data order. The baseline has no
    processors; the other arms load theirs from stage 1 (models/align/<arm>). head: finetune.head."""
    from fourtier import paths
    from fourtier.errors import DataError
    from fourtier.models.ftp import FTP, FTPConfig, read_saved

    seed_everything(seed)
    baseline = FTP(FTPConfig(dim, grid, [], n_classes, head=head))
    if arm == "baseline":
        return baseline
    saved = paths.align_model(arm)
    if not saved.with_suffix(".safetensors").exists():
        raise DataError(f"{saved}.safetensors is missing: align trains the arms in finetune.arms; re-run align "
                        "(dvc repro)")
    model = FTP(FTPConfig(dim, grid, prompts, n_classes, processor=read_saved(saved)["config"].processor, head=head))
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


def F_one_hot(y: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, n).float()
