"""align stage (training stage 1): feature processors learn to match their prompt's text embeddings (InfoNCE).

Writes into models/align/ the processors that finetune.arms needs, each as <arm>.safetensors + <arm>.json:
ftp (real captions), shuffled (captions permuted across videos: the control without the captions' meaning),
random (the same processors untrained: the capacity control). models/align_metrics.json holds per-prompt video-to-text retrieval on
held-out pretraining clips against chance. Ablations that train only the ftp arm skip the shuffled run.
Data parallel over runtime.nproc_per_node x nnodes processes (fourtier.runtime.launch, fourtier.runtime.distributed). Every
epoch is checkpointed (fourtier.train.checkpoints): a crash loses at most one epoch, and the same command resumes,
at any world size.
"""
import functools
import json
import shutil
import time

import numpy as np

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.config.train import TrainGroup
from fourtier.errors import DataError, exits_cleanly
from fourtier.features.source import open_features
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.runtime import distributed
from fourtier.runtime.hardware import loader_workers, resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process
from fourtier.runtime.parallel import run_parallel, run_slots
from fourtier.text.embed import load_embeddings
from fourtier.train import checkpoints
from fourtier.train.align import train_alignment
from fourtier.train.optim import seed_everything
from fourtier.train.targets import PooledTargets, TokenTargets


STAGE1_PARTS = ("processors", "align_heads")


@functools.cache
def _context() -> dict:
    """What both runs read, once per process (the spawned ones included): the features, the pooled text
    embeddings of the same clips (and their token-level ones for objective `tokens`), opened to be read a batch
    at a time, the split and the stage-1 model's shapes."""
    params = load_params(DataParams, TrainGroup, RuntimeGroup)
    device = resolve_device(params.runtime.device)
    corpus = params.pretrain[0]
    source = open_features(paths.features(corpus), paths.raw(corpus), paths.BACKBONE, device)
    emb = load_embeddings(paths.embeddings(corpus))
    position = {v: i for i, v in enumerate(emb.videos)}
    missing = [v for v in source.videos if v not in position]
    if missing:
        raise DataError(f"{len(missing)} clips of {corpus} have features but no caption embeddings (e.g. {missing[0]}); "
                        "re-run caption and embed")
    rows = np.array([position[v] for v in source.videos])
    pooled = PooledTargets(emb.pooled, rows)  # read per batch: memory bounded by the batch, not the corpus
    train_idx = source.split("train")
    val_idx = np.nonzero(source.splits != "train")[0]
    if len(val_idx) < 5:
        raise DataError(f"{corpus} needs held-out clips (split val) to report stage-1 retrieval")
    cfg = params.align
    tokens = None
    if cfg.objective == "tokens":  # read a batch at a time from the memory map
        tokens = TokenTargets(emb.tokens, emb.mask, rows)
        truncated = emb.meta.get("truncated_answers", 0)
        if truncated:
            print(f"align: {truncated} of {emb.meta['texts']} answers are longer than embed.max_tokens = "
                  f"{emb.meta['max_tokens']}, so the token-wise objective does not see their end; raise "
                  "embed.max_tokens to keep them whole")
    text_dim = emb.tokens.shape[-1] if tokens is not None else pooled.dim
    config = FTPConfig(source.dim, source.grid, list(params.prompts), n_classes=1, text_dim=text_dim,
                       processor=cfg.processor, objective=cfg.objective)
    return {"params": params, "device": device, "corpus": corpus, "source": source, "pooled": pooled,
            "tokens": tokens,
            "train_idx": train_idx, "val_idx": val_idx, "config": config,
            "workers": loader_workers(params.runtime.loader_workers, device)}


def initial_model() -> FTP:
    """Every arm's starting weights (the random arm keeps them): drawn from align.seed alone, so each process
    that builds them gets the same ones."""
    ctx = _context()
    seed_everything(ctx["params"].align.seed)
    return FTP(ctx["config"])


def run_key(ctx: dict) -> list:
    """What shapes stage 1's runs, for their checkpoints: the settings, the clips, what m was made from
    (backbone weights, views), and the text embeddings' bytes."""
    import hashlib

    params, source = ctx["params"], ctx["source"]
    digest = hashlib.sha256()
    pooled = ctx["pooled"]
    for start in range(0, len(pooled.rows), 4096):  # a slice at a time: the digest of the whole (N, 4, P) array
        digest.update(np.ascontiguousarray(pooled.take(np.arange(start, min(start + 4096, len(pooled.rows))))).tobytes())
    if ctx["tokens"] is not None:
        for start in range(0, len(ctx["tokens"].rows), 4096):  # a memory map, read a slice at a time
            digest.update(np.ascontiguousarray(ctx["tokens"].tokens[ctx["tokens"].rows[start:start + 4096]]).tobytes())
    backbone = sorted(paths.BACKBONE.glob("*"))
    return ["align checkpoint v1", repr(params.align), list(params.prompts), ctx["device"].type, ctx["corpus"],
            source.meta["shape"], source.meta.get("temporal_views"), source.videos,
            [hashlib.sha256(path.read_bytes()).hexdigest() for path in backbone if path.is_file()],
            digest.hexdigest()]


def train_arm(job: tuple[str, str], step) -> tuple[str, dict]:
    """Stage 1 for `ftp` (the real captions) or `shuffled` (captions permuted across training clips), from the
    shared initial weights to the saved processors, checkpointed in job's directory. Runs in this process or in
    a worker; step() per epoch."""
    from pathlib import Path

    arm, checkpoint_dir = job
    ctx = _context()
    cfg, pooled, train_idx = ctx["params"].align, ctx["pooled"], ctx["train_idx"]
    targets, tokens = pooled, ctx["tokens"]
    if arm == "shuffled":  # the control keeps which captions exist but breaks which video they belong to
        perm = np.random.default_rng(cfg.seed + 1).permutation(len(train_idx))
        rows = pooled.rows.copy()  # which embeddings row each clip reads: permuted, no copy of the embeddings
        rows[train_idx] = pooled.rows[train_idx[perm]]
        targets = PooledTargets(pooled.pooled, rows)
        if tokens is not None:
            rows = tokens.rows.copy()
            rows[train_idx] = tokens.rows[train_idx[perm]]
            tokens = TokenTargets(tokens.tokens, tokens.mask, rows)
    start = time.perf_counter()
    model = initial_model()
    # only training rows are shuffled: retrieval is scored against the true captions of held-out clips
    result = train_alignment(model, ctx["source"], train_idx, ctx["val_idx"], targets, cfg.optim, cfg.seed, tag=arm,
                             device=ctx["device"], workers=ctx["workers"], on_epoch=step,
                             tokens=tokens, checkpoint=Path(checkpoint_dir) / f"{arm}.pt")
    metrics = {p: {k: round(v, 4) for k, v in r.items()} for p, r in result.items()}
    if not distributed.is_main():
        return "", metrics
    model.cpu().save(paths.align_model(arm), STAGE1_PARTS,
                     {"corpus": ctx["corpus"], "backbone": ctx["source"].meta["backbone"], "arm": arm})
    summary = ", ".join(f"{p} R@1 {r['R@1']:.3f} (chance {r['chance_R@1']:.3f})" for p, r in result.items())
    return f"align {arm}: {summary} [{time.perf_counter() - start:.0f} s]", metrics


@exits_cleanly
@distributed.names_rank
def main() -> None:
    params = load_params(DataParams, TrainGroup, RuntimeGroup)
    relaunch(params.runtime, "align")
    device = resolve_device(params.runtime.device)
    distributed.setup(device, params.runtime.timeout_s)
    ctx = _context()
    ctx["checkpoints"] = checkpoints.run_directory(params.runtime.checkpoint_dir, "align", run_key(ctx))
    out = paths.ALIGN
    if distributed.is_main():
        shutil.rmtree(out, ignore_errors=True)  # the directory holds exactly this run's arms
        out.mkdir(parents=True)
    arms = [arm for arm in params.finetune.arms if arm != "baseline"] if params.prompts else []
    metrics = {"prompts": list(params.prompts), "train_clips": int(len(ctx["train_idx"])),
               "heldout_clips": int(len(ctx["val_idx"]))}
    if distributed.is_main() and "random" in arms:
        initial_model().save(paths.align_model("random"), STAGE1_PARTS,
                             {"corpus": ctx["corpus"], "backbone": ctx["source"].meta["backbone"], "arm": "random"})
    trained = [arm for arm in ("ftp", "shuffled") if arm in arms]
    processes, threads = run_slots(len(trained), params.workers, device.type, distributed.world())
    threads = min(threads, threads_per_process(params.workers))
    results = run_parallel(train_arm, [(arm, str(ctx["checkpoints"])) for arm in trained], processes, threads,
                           f"align: {len(trained)} arms, {processes} at a time", params.align.optim.epochs,
                           show=distributed.is_main())
    metrics.update(zip(trained, results))
    if not arms:
        print("align: nothing to train (prompts: [] or only the baseline arm)")
    if distributed.is_main():
        paths.ALIGN_METRICS.write_text(json.dumps(metrics, indent=1) + "\n")
        shutil.rmtree(ctx["checkpoints"], ignore_errors=True)  # the stage's outputs are whole
    distributed.teardown()


if __name__ == "__main__":
    main()
