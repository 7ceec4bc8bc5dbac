"""evaluate stage, per target dataset: multi-view testing of every arm and seed, FTP against the baseline
and the controls, FLOPs/params overhead (data/eval/<ds>), with the confusion matrices, a t-SNE of the classifier
features and per-class top-1 (per_class.csv, plotted as FTP minus baseline) as plots.

metrics.json holds scalars only (mean, sample std, paired gains with ci95_low / ci95_high), which is what
`dvc metrics show/diff` and `dvc exp show` display; runs.json holds every seed's numbers. The CPU latency depends
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
from fourtier.evaluation.metrics import accuracy_metrics, latency_ms, load_classifier, overhead, paired_gain, summarise
from fourtier.evaluation.plots import placeholder, plot_tsne, write_class_table
from fourtier.evaluation.predict import classifier_features, predict
from fourtier.features.source import open_features
from fourtier.models.backbone import load_backbone
from fourtier.runtime import distributed
from fourtier.runtime.hardware import loader_workers, resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process


def arm_and_seed(path) -> tuple[str, int]:
    """A finetune model's arm and seed from its name, <arm>-seed<seed>."""
    arm, seed = path.stem.rsplit("-seed", 1)
    return arm, int(seed)


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
    idx = source.split("val")
    labels = source.labels[idx]
    runs = sorted(paths.finetune_dir(args.dataset).glob("*-seed*.safetensors"), key=arm_and_seed)  # seed order
    if not runs:
        raise DataError(f"no trained models in {paths.finetune_dir(args.dataset)}: run finetune first (dvc repro)")
    out = paths.evaluation(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    models = {}
    for arm in ("ftp", "baseline"):  # declared outputs exist even when finetune.arms leaves an arm out
        if main_rank:
            (out / f"confusion_{arm}.csv").write_text("actual,predicted\n")
    for path in runs:
        arm, seed = arm_and_seed(path)
        model = load_classifier(path.with_suffix(""), source.classes).to(device)
        models.setdefault(arm, model)
        probs = predict(model, source, idx, workers=workers)
        results.setdefault(arm, []).append(accuracy_metrics(probs, labels, source.classes))
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
    seeds = sorted({arm_and_seed(path)[1] for path in runs})
    metrics = {"val_clips": int(len(idx)), "classes": len(source.classes), "seeds": len(seeds),
               "views": {"temporal": source.meta["temporal_views"], "spatial": source.meta["spatial_views"]}}
    kinds = ("top1", "top5", "mean_class_accuracy")
    per_seed = {"seeds": seeds, **{arm: {k: [round(r[k], 4) for r in rs] for k in kinds} for arm, rs in results.items()}}
    (out / "runs.json").write_text(json.dumps(per_seed, indent=1) + "\n")
    for arm, rs in results.items():
        metrics[arm] = {k: summarise([r[k] for r in rs]) for k in kinds}
    if "baseline" in results:
        base = np.array([r["top1"] for r in results["baseline"]])
        for arm, rs in results.items():
            if arm != "baseline":
                metrics[f"{arm}_gain_top1"] = paired_gain([r["top1"] for r in rs], list(base))
    if "ftp" in results:  # what the captions add beyond the processors' capacity and beyond captions at random
        ftp = [r["top1"] for r in results["ftp"]]
        for control in ("random", "shuffled"):
            if control in results:
                metrics[f"ftp_minus_{control}_top1"] = paired_gain(ftp, [r["top1"] for r in results[control]])
    per_class = {arm: {c: float(np.mean([r["per_class"].get(c, 0.0) for r in rs])) for c in source.classes}
                 for arm, rs in results.items()}
    write_class_table(per_class, out / "per_class.csv")
    if "ftp" not in models or "baseline" not in models:
        placeholder(out / "tsne.png", f"tsne.png compares FTP with the baseline; finetune.arms trained only "
                                      f"{', '.join(sorted(models))}")
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
    line = ", ".join(f"{arm} {metrics[arm]['top1']['mean']:.3f}+-{metrics[arm]['top1']['std']:.3f}" for arm in results)
    print(f"evaluate {args.dataset}: top-1 {line}")
    for key in [k for k in metrics if k.endswith("_top1")]:
        gain = metrics[key]
        ci = f" [{gain['ci95_low']:+.3f}, {gain['ci95_high']:+.3f}]" if "ci95_low" in gain else ""
        print(f"  {key.removesuffix('_top1').replace('_gain', ' - baseline').replace('_minus_', ' - ')}: "
              f"{gain['mean']:+.3f}{ci} (paired over {len(seeds)} seeds, 95% interval)")
    print("  CPU latency per clip: " + ", ".join(f"{arm} {ms} ms" for arm, ms in latency.items()))


if __name__ == "__main__":
    main()
