"""finetune stage (training stage 2), per target dataset: backbone and processors frozen; the integration
projection, the two transformer blocks and the classifier train with cross-entropy.

Every arm in finetune.arms is trained for every seed in finetune.seeds (and, for a dataset run on several official
splits, on each split's training clips: README, "Three splits"):
  baseline  no processors (prompts: []), the paper's group 1
  ftp       processors from stage 1 on the real captions
  random    the same processors untrained: the gain from capacity alone
  shuffled  processors from stage 1 on captions permuted across videos: the gain without their meaning
A crash loses at most one epoch: each run checkpoints every epoch and resumes from there (fourtier.train.checkpoints).
On the CPU the runs go side by side, one per core (fourtier.runtime.parallel.run_slots); each run's numbers do not depend
on which process runs it. With runtime.nproc_per_node x nnodes above 1 (fourtier.runtime.launch) the runs are spread over
the ranks, one per GPU at a time (runtime.stage2_parallel: runs, the same bytes as one process), or each run is
data parallel over all of them (ddp; the same experiment at any world size, up to float rounding).
"""
import argparse
import functools
import hashlib
import shutil
import time
from pathlib import Path

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.config.train import TrainGroup
from fourtier.errors import exits_cleanly
from fourtier.evaluation.fewshot import few_shot_subset
from fourtier.features.source import open_features
from fourtier.runtime import distributed
from fourtier.runtime.hardware import loader_workers, resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process
from fourtier.runtime.parallel import run_parallel, run_slots
from fourtier.train import checkpoints
from fourtier.train.finetune import stage2_model, train_classifier


@functools.cache
def _context(dataset: str) -> dict:
    """What every run of this stage reads, once per process (the spawned ones included)."""
    params = load_params(DataParams, TrainGroup, RuntimeGroup)
    device = resolve_device(params.runtime.device)
    cfg = params.finetune
    source = open_features(paths.features(dataset), paths.raw(dataset), paths.BACKBONE, device)
    # one training set per official split (README, "Three splits"); fold None: the dataset's one split
    train_idx = {fold: few_shot_subset(source.split("train", fold), source.labels, cfg.shots, cfg.shots_seed,
                                       source.classes) for fold in source.fold_ids}
    return {"params": params, "device": device, "source": source, "train_idx": train_idx,
            "workers": loader_workers(params.runtime.loader_workers, device)}


def end_live(live) -> None:
    """live.end(). Its last step removes dvclive's one signal file for VS Code
    (.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED) after checking that it exists; runs side by side that end together
    race for it, and the loser's FileNotFoundError (seen in a CI run) must not fail a finished run."""
    try:
        live.end()
    except FileNotFoundError as exc:
        if not str(exc.filename).endswith("DVCLIVE_STEP_COMPLETED"):
            raise


def train_run(job: tuple[str, str, int, int | None, str], step) -> tuple[str, float]:
    """One arm, seed and official split (None: the dataset's one split), start to saved model (resuming its
    checkpoint if one is there). Runs in this process or in a worker (fourtier.runtime.parallel.run_parallel);
    step() is called after every epoch."""
    dataset, arm, seed, fold, checkpoints = job
    ctx = _context(dataset)
    params, source, device = ctx["params"], ctx["source"], ctx["device"]
    cfg = params.finetune
    from dvclive import Live

    start = time.perf_counter()
    model = stage2_model(arm, list(params.prompts), source.dim, source.grid, len(source.classes), seed,
                         params.finetune.head)
    name = paths.finetune_model(dataset, arm, seed, fold).name
    live = Live(str(paths.finetune_log(dataset) / name), dvcyaml=False,
                save_dvc_exp=False, report=None) if distributed.is_main() else None
    history = train_classifier(model, source, ctx["train_idx"][fold], source.labels, cfg.optim, seed,
                               cfg.label_smoothing, cfg.mixup_alpha, cfg.mixup_prob,
                               checkpoint=Path(checkpoints) / (f"{arm}-{seed}.pt" if fold is None else f"{name}.pt"),
                               live=live, tag="train",
                               device=device, workers=ctx["workers"], on_epoch=step)
    if live is not None:
        end_live(live)
    if not distributed.is_main():
        return "", history[-1]["loss"]
    info = {"classes": source.classes, "arm": arm, "seed": seed, "backbone": source.meta["backbone"]}
    model.cpu().save(paths.finetune_model(dataset, arm, seed, fold), ("processors", "integration", "classifier"),
                     info if fold is None else {**info, "split": fold})
    where = "" if fold is None else f" split {fold}"
    return (f"finetune {dataset} {arm}{where} seed {seed}: final loss {history[-1]['loss']:.3f} "
            f"[{time.perf_counter() - start:.0f} s]"), history[-1]["loss"]


@exits_cleanly
@distributed.names_rank
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    args = parser.parse_args()
    params = load_params(DataParams, TrainGroup, RuntimeGroup)
    params.dataset(args.dataset)
    relaunch(params.runtime, f"finetune {args.dataset}")
    device = resolve_device(params.runtime.device)
    distributed.setup(device, params.runtime.timeout_s)
    cfg = params.finetune
    ctx = _context(args.dataset)
    source = ctx["source"]
    folds = source.fold_ids
    if cfg.shots and distributed.is_main():
        print(f"finetune {args.dataset}: few-shot, {cfg.shots} labelled clips per class "
              f"({len(ctx['train_idx'][folds[0]])} in all)")
    if folds != [None] and distributed.is_main():
        print(f"finetune {args.dataset}: official splits {folds}, every arm and seed trained on each")
    prompts = list(params.prompts)
    out = paths.finetune_dir(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    # resumable runs are keyed by everything that shapes them, including stage 1's saved weights
    align_files = sorted(paths.ALIGN.glob("*.safetensors")) + sorted(paths.ALIGN.glob("*.json"))
    # and by the training clips of each split: another official split (or relabelled clips) of the same shape
    # must not resume this one's checkpoints
    train_clips = {str(fold): hashlib.sha256("\n".join(f"{source.videos[i]}\t{source.labels[i]}" for i in idx).encode())
                   .hexdigest() for fold, idx in ctx["train_idx"].items()}
    key = ["checkpoint v6", args.dataset, device.type, repr(cfg), prompts, source.meta["shape"],
           [hashlib.sha256(path.read_bytes()).hexdigest() for path in align_files], train_clips]
    run_dir = checkpoints.run_directory(params.runtime.checkpoint_dir, "finetune", key)
    (run_dir / f"done-{distributed.group_rank()}").unlink(missing_ok=True)  # from a run that crashed elsewhere
    distributed.barrier()
    skipped = [arm for arm in cfg.arms if arm != "baseline" and not prompts]
    for arm in skipped:
        if distributed.is_main():
            print(f"finetune {args.dataset}: arm {arm} skipped (prompts: [] leaves only the baseline)")
    jobs = [(args.dataset, arm, seed, fold, str(run_dir))
            for fold in folds for arm in cfg.arms if arm not in skipped for seed in cfg.seeds]
    if distributed.world() > 1 and params.runtime.stage2_parallel == "runs":
        # each rank its own runs, as one process trains them (no DDP): rank r takes runs r, r + W, ...
        world, main_rank = distributed.world(), distributed.is_main()
        mine = jobs[distributed.rank()::world]
        with distributed.solo():
            run_parallel(train_run, mine, 1, threads_per_process(params.workers),
                         f"finetune {args.dataset}: {len(jobs)} runs over {world} ranks "
                         f"(rank 0's {len(mine)} shown)", cfg.optim.epochs, show=main_rank)
    else:
        processes, threads = run_slots(len(jobs), params.workers, device.type, distributed.world())
        run_parallel(train_run, jobs, processes, min(threads, threads_per_process(params.workers)),
                     f"finetune {args.dataset}: {len(jobs)} runs, {processes} at a time", cfg.optim.epochs,
                     show=distributed.is_main())
    # the checkpoints go once every rank is done. Not with a barrier: with runs spread over the ranks, a rank
    # with one run fewer would wait a whole run in it, past runtime.timeout_s. The last rank to finish removes
    # them (several may see that at once: rmtree tolerates it).
    (run_dir / f"done-{distributed.group_rank()}").write_text("")
    if all((run_dir / f"done-{r}").exists() for r in range(distributed.group_world())):
        shutil.rmtree(run_dir, ignore_errors=True)
    distributed.teardown()


if __name__ == "__main__":
    main()
