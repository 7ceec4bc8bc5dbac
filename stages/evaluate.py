"""evaluate stage, per target dataset: multi-view testing of every arm and seed, FTP against the baseline
and the controls, FLOPs/params overhead (data/eval/<ds>), with the confusion matrices, a t-SNE of the classifier
features and per-class top-1 (per_class.csv, plotted as FTP minus baseline) as plots.

metrics.json holds scalars only (mean, sample std, paired gains with ci95_low / ci95_high), which is what
`dvc metrics show/diff` and `dvc exp show` display; runs.json holds every seed's numbers. A dataset run on several
official splits (README, "Three splits") is reported as the protocol asks: per arm, each split's mean over seeds,
then their mean and sample std over splits, gains paired by split, and each split's own summary under split<k>. The CPU latency depends
on the machine, so it goes to data/timings/evaluate-<ds>.json, outside the stage's outputs and dvc.lock.
With runtime.nproc_per_node x nnodes above 1 the validation clips are dealt out to the ranks in the chunks one
process uses, and gathered (the same bytes); rank 0 writes everything."""
import argparse
import csv
import json

import numpy as np
import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.errors import DataError, exits_cleanly
from fourtier.evaluation.metrics import (accuracy_metrics, arm_summary, gain_lines, latency_ms, load_classifier,
                                         over_splits, overhead, seed_table, top1_line)
from fourtier.evaluation.plots import placeholder, plot_tsne, write_class_table
from fourtier.evaluation.predict import classifier_features, predict
from fourtier.features.source import open_features
from fourtier.models.backbone import load_backbone
from fourtier.runtime import distributed
from fourtier.runtime.hardware import loader_workers, resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process


def run_order(path) -> tuple:
    arm, fold, seed = paths.finetune_run(path)
    return arm, fold or 0, seed


@exits_cleanly
@distributed.names_rank
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    args = parser.parse_args()
    params = load_params(DataParams, RuntimeGroup)
    params.dataset(args.dataset)
    relaunch(params.runtime, f"evaluate {args.dataset}")
    torch.set_num_threads(threads_per_process(params.workers))
    device = resolve_device(params.runtime.device)
    distributed.setup(device, params.runtime.timeout_s)
    main_rank = distributed.is_main()
    workers = loader_workers(params.runtime.loader_workers, device)
    source = open_features(paths.features(args.dataset), paths.raw(args.dataset), paths.BACKBONE, device)
    folds = source.fold_ids  # [None]: one split; else the official splits, each with its own models
    val = {fold: source.split("val", fold) for fold in folds}
    idx = val[folds[0]]  # the plots (confusion, t-SNE) show the first split
    labels = source.labels[idx]
    runs = sorted(paths.finetune_dir(args.dataset).glob("*-seed*.safetensors"), key=run_order)  # seed order
    if not runs:
        raise DataError(f"no trained models in {paths.finetune_dir(args.dataset)}: run finetune first (dvc repro)")
    out = paths.evaluation(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int | None, dict[str, list[dict]]] = {fold: {} for fold in folds}
    models = {}
    for arm in ("ftp", "baseline"):  # declared outputs exist even when finetune.arms leaves an arm out
        if main_rank:
            (out / f"confusion_{arm}.csv").write_text("actual,predicted\n")
    for path in runs:
        arm, fold, seed = paths.finetune_run(path)
        if fold not in results:
            have = "one split" if folds == [None] else f"official splits {folds}"
            raise DataError(f"{path} is a model of {'official split ' + str(fold) if fold else 'one split'}, but "
                            f"{args.dataset}'s features have {have}: re-run finetune (dvc repro)")
        model = load_classifier(path.with_suffix(""), source.classes).to(device)
        probs = predict(model, source, val[fold], workers=workers)
        results[fold].setdefault(arm, []).append(accuracy_metrics(probs, source.labels[val[fold]], source.classes))
        if fold != folds[0]:
            continue
        models.setdefault(arm, model)
        if seed == 0 and arm in ("ftp", "baseline") and main_rank:  # the two declared confusion plots
            with open(out / f"confusion_{arm}.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["actual", "predicted"])
                writer.writerows((source.classes[a], source.classes[p]) for a, p in zip(labels, probs.argmax(1)))
    if "ftp" in models and "baseline" in models:  # every rank computes its share of the t-SNE's features
        features = {arm: classifier_features(models[arm], source, idx, workers=workers) for arm in ("baseline", "ftp")}
    distributed.teardown()
    if not main_rank:  # rank 0 writes what was gathered
        return
    seeds = sorted({paths.finetune_run(path)[2] for path in runs})
    views = {"temporal": source.meta["temporal_views"], "spatial": source.meta["spatial_views"]}

    if folds == [None]:
        metrics = {"val_clips": int(len(idx)), "classes": len(source.classes), "seeds": len(seeds), "views": views,
                   **arm_summary(results[None])}
        per_seed = seed_table(results[None], seeds)
    else:
        runs_per_split = {fold: {arm: len(rs) for arm, rs in by_arm.items()} for fold, by_arm in results.items()}
        if len({tuple(sorted(r.items())) for r in runs_per_split.values()}) > 1:  # the protocol pairs by split
            raise DataError(f"{paths.finetune_dir(args.dataset)} has other arms or seeds in one official split than "
                            f"in another (models per split and arm: {runs_per_split}): re-run finetune (dvc repro)")
        metrics = {"splits": len(folds), "val_clips": {f"split{f}": int(len(val[f])) for f in folds},
                   "classes": len(source.classes), "seeds": len(seeds), "views": views, **over_splits(results)}
        per_seed = {f"split{fold}": seed_table(rs, seeds) for fold, rs in results.items()}
    (out / "runs.json").write_text(json.dumps(per_seed, indent=1) + "\n")
    every = {}  # every run of every split, per arm
    for rs in results.values():
        for arm, runs_of_arm in rs.items():
            every.setdefault(arm, []).extend(runs_of_arm)
    per_class = {arm: {c: float(np.mean([r["per_class"].get(c, 0.0) for r in rs])) for c in source.classes}
                 for arm, rs in every.items()}
    write_class_table(per_class, out / "per_class.csv")
    if "ftp" not in models or "baseline" not in models:
        placeholder(out / "tsne.png", f"tsne.png compares FTP with the baseline; finetune.arms trained only "
                                      f"{', '.join(sorted(models))}")
    elif len(idx) < 3:  # t-SNE's perplexity (at least 2) must be below the number of points
        placeholder(out / "tsne.png", f"{len(idx)} validation clips: too few for a t-SNE")
    else:
        plot_tsne(features, labels, source.classes, out / "tsne.png",
                  f"t-SNE of classifier features, {args.dataset}: validation clips, seed 0")
    models = {arm: model.cpu() for arm, model in models.items()}  # overhead and latency are CPU figures
    backbone = load_backbone(paths.BACKBONE)
    pre = backbone.preprocess
    clip = torch.zeros(1, pre.frames, 3, pre.size, pre.size)
    if "ftp" in models and "baseline" in models:
        metrics["overhead"] = overhead(backbone, models["ftp"], models["baseline"], clip)
    views = clip.expand(source.n_views, -1, -1, -1, -1).contiguous()
    latency = {arm: latency_ms(backbone, m, views) for arm, m in models.items() if arm in ("ftp", "baseline")}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    paths.TIMINGS.mkdir(parents=True, exist_ok=True)
    paths.timings("evaluate", args.dataset).write_text(json.dumps({"cpu_latency_ms_per_clip": latency}, indent=1) + "\n")
    over = f"{len(seeds)} seeds" if folds == [None] else f"{len(folds)} official splits, each the mean of {len(seeds)} seeds"
    line = top1_line(metrics, [arm for arm in every if arm in metrics])
    print(f"evaluate {args.dataset}: top-1 {line}" + ("" if folds == [None] else f" (mean +- sample std over {over})"))
    for line in gain_lines(metrics, over):
        print(line)
    print("  CPU latency per clip: " + ", ".join(f"{arm} {ms} ms" for arm, ms in latency.items()))


if __name__ == "__main__":
    main()
