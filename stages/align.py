"""align stage (training stage 1): feature processors learn to match their prompt's text embeddings (InfoNCE).

Writes into models/align/ the processors that finetune.arms needs, each as <arm>.safetensors + <arm>.json:
ftp (real captions), shuffled (captions permuted across videos: the control without the captions' meaning),
random (the same processors untrained: the capacity control). models/align_metrics.json holds per-prompt video-to-text retrieval on
held-out pretraining clips against chance. Ablations that train only the ftp arm skip the shuffled run.
Data parallel under `torchrun --nproc_per_node N stages/align.py` (see fourtier.distributed).
"""
import json
import shutil
import time

import numpy as np
import torch

from fourtier import distributed, paths
from fourtier.errors import DataError, exits_cleanly
from fourtier.features import open_features
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.params import load_params
from fourtier.runtime import loader_workers, resolve_device
from fourtier.text import load_embeddings
from fourtier.optim import seed_everything
from fourtier.training import train_alignment


STAGE1_PARTS = ("processors", "align_heads")


@exits_cleanly
def main() -> None:
    params = load_params()
    device = resolve_device(params.runtime.device)
    distributed.setup(device)
    torch.set_num_threads(max(1, params.workers // distributed.world()))
    workers = loader_workers(params.runtime.loader_workers, device)
    cfg = params.align
    corpus = params.pretrain[0]
    source = open_features(paths.features(corpus), paths.raw(corpus), paths.BACKBONE, device)
    emb = load_embeddings(paths.embeddings(corpus))
    position = {v: i for i, v in enumerate(emb.videos)}
    missing = [v for v in source.videos if v not in position]
    if missing:
        raise DataError(f"{len(missing)} clips of {corpus} have features but no caption embeddings (e.g. {missing[0]}); "
                        "re-run caption and embed")
    pooled = np.asarray(emb.pooled[[position[v] for v in source.videos]])
    text_dim = pooled.shape[-1]
    train_idx = source.split("train")
    val_idx = np.nonzero(source.splits != "train")[0]
    if len(val_idx) < 5:
        raise DataError(f"{corpus} needs held-out clips (split val) to report stage-1 retrieval")
    out = paths.ALIGN
    if distributed.is_main():
        shutil.rmtree(out, ignore_errors=True)  # the directory holds exactly this run's arms
        out.mkdir(parents=True)
    arms = [arm for arm in params.finetune.arms if arm != "baseline"] if params.prompts else []
    prompts = list(params.prompts)
    config = FTPConfig(source.dim, source.grid, prompts, n_classes=1, text_dim=text_dim)
    meta = {"corpus": corpus, "backbone": source.meta["backbone"]}
    metrics = {"prompts": prompts, "train_clips": int(len(train_idx)), "heldout_clips": int(len(val_idx))}
    seed_everything(cfg.seed)
    init = FTP(config)
    if distributed.is_main() and "random" in arms:
        init.save(paths.align_model("random"), STAGE1_PARTS, {**meta, "arm": "random"})
    # the control keeps which captions exist but breaks which video they belong to
    shuffled = pooled.copy()
    perm = np.random.default_rng(cfg.seed + 1).permutation(len(train_idx))
    shuffled[train_idx] = pooled[train_idx[perm]]
    for arm, targets in (("ftp", pooled), ("shuffled", shuffled)):
        if arm not in arms:
            continue
        start = time.perf_counter()
        model = FTP(config)
        model.load_state_dict(init.state_dict())
        # only training rows are shuffled: retrieval is scored against the true captions of held-out clips
        result = train_alignment(model, source, train_idx, val_idx, targets, cfg.optim, cfg.seed, tag=arm,
                                 device=device, workers=workers)
        if distributed.is_main():
            model.cpu().save(paths.align_model(arm), STAGE1_PARTS, {**meta, "arm": arm})
        metrics[arm] = {p: {k: round(v, 4) for k, v in r.items()} for p, r in result.items()}
        summary = ", ".join(f"{p} R@1 {r['R@1']:.3f} (chance {r['chance_R@1']:.3f})" for p, r in result.items())
        if distributed.is_main():
            print(f"align {arm}: {summary} [{time.perf_counter() - start:.0f} s]")
    if not arms:
        print("align: nothing to train (prompts: [] or only the baseline arm)")
    if distributed.is_main():
        paths.ALIGN_METRICS.write_text(json.dumps(metrics, indent=1) + "\n")
    distributed.teardown()


if __name__ == "__main__":
    main()
