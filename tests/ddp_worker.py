"""Stage 1 and stage 2 on small in-memory data; run as one process or under torchrun (tests/test_distributed.py).

Rank 0 saves the trained weights, the trained model's outputs, the retrieval metrics and the loss history
to argv[1]. Dropout and mixup are on: their draws are of the global batch, so one process and N processes must
take the same optimiser steps up to float rounding.

argv[2], the mode: `full` trains both stages to the end; with argv[3], both checkpoint there and resume from
there; `crash-align` / `crash-finetune` stop after epoch 2 of that stage, as a crash would.
"""
import sys

import numpy as np
import torch

from fourtier.runtime import distributed
from helpers import ArraySource
from fourtier.config.base import OptimSettings
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.train.align import AlignmentModel, alignment_backward, train_alignment
from fourtier.train.finetune import classifier_backward, train_classifier
from fourtier.train.losses import caption_groups

T, H, W, D = 2, 2, 2, 8


def one_step_gradients(model, source, pooled, labels) -> dict:
    """The summed gradients of one stage-1 batch (27 clips) and one stage-2 batch (25 clips)."""
    idx = np.arange(27)
    part = distributed.shard(len(idx))
    e = list(torch.nn.functional.normalize(torch.from_numpy(pooled[idx][:, :2].astype(np.float32)), dim=-1).unbind(1))
    groups = {p: torch.from_numpy(caption_groups(pooled[idx, j])) for j, p in enumerate(model.prompts)}
    stage1 = AlignmentModel(model)
    with torch.no_grad():
        stage1.logit_scale.fill_(2.0)
    cpu = torch.device("cpu")
    alignment_backward(distributed.wrap(stage1, cpu), stage1.logit_scale, source.get(idx[part], 0), len(idx), e, groups)
    grads = {f"align.{k}": p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    grads["align.logit_scale"] = stage1.logit_scale.grad.clone()
    model.zero_grad()
    idx = np.arange(25)
    part = distributed.shard(len(idx))
    target = torch.nn.functional.one_hot(torch.from_numpy(labels[idx]), 3).float()
    model.requires_grad_(False)
    for p in model.stage2_parameters():
        p.requires_grad_(True)
    classifier_backward(distributed.wrap(model, cpu), source.get(idx[part], 1), target[part], len(idx))
    grads.update({f"classify.{k}": p.grad.clone() for k, p in model.named_parameters()
                  if p.grad is not None and k.startswith(("integration.", "classifier."))})
    model.zero_grad(set_to_none=True)
    model.requires_grad_(True)
    return grads


class Crash(Exception):
    pass


def main(out: str, mode: str = "full", checkpoints: str = "") -> None:
    from pathlib import Path

    distributed.setup(torch.device("cpu"))
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    m = rng.normal(size=(40, 2, T, H, W, D)).astype(np.float32)
    pooled = rng.normal(size=(40, 4, 6)).astype(np.float16)
    labels = rng.integers(0, 3, 40)
    torch.manual_seed(0)
    model = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=3, text_dim=6))
    source = ArraySource(m)
    gradients = one_step_gradients(model, source, pooled, labels) if mode == "full" else {}
    if checkpoints:
        Path(checkpoints).mkdir(exist_ok=True)
    kept = {"align": Path(checkpoints) / "align.pt", "finetune": Path(checkpoints) / "finetune.pt"} if checkpoints else {}
    epochs_seen = []

    def crash_after_two(stage):
        def step():
            epochs_seen.append(1)
            if mode == f"crash-{stage}" and len(epochs_seen) == 2:
                raise Crash
        return step

    try:
        # 27 training clips in batches of 8: the last batch (3) splits unevenly across 2 ranks
        retrieval = train_alignment(model, source, np.arange(27), np.arange(27, 40), pooled,
                                    OptimSettings(3, 8, 1e-2, 0.05, (0.9, 0.95), 1), seed=0,
                                    checkpoint=kept.get("align"), on_epoch=crash_after_two("align"))
    except Crash:
        distributed.teardown()
        return
    epochs_seen.clear()
    try:
        # 25 clips in batches of 8: the last batch (1) leaves one rank with nothing to do; mixup on, dropout on
        history = train_classifier(model, source, np.arange(25), labels,
                                   OptimSettings(3, 8, 1e-2, 0.05, (0.9, 0.999), 1), seed=0, label_smoothing=0.1,
                                   mixup_alpha=0.8, mixup_prob=0.5, checkpoint=kept.get("finetune"),
                                   on_epoch=crash_after_two("finetune"))
    except Crash:
        distributed.teardown()
        return
    model.eval()
    with torch.no_grad():
        every = torch.from_numpy(m[:, 0])
        outputs = {"logits": model(every), **{f"z_{p}": z for p, z in model.align_embeddings(every).items()}}
    if distributed.is_main():
        torch.save({"state": model.state_dict(), "outputs": outputs, "gradients": gradients, "retrieval": retrieval, "history": history,
                    "world": distributed.world()}, out)
    distributed.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
