"""cross-dataset stage, per entry of `cross_dataset` in params.yaml: the stage-2 models of one target tested on
another target's clips of the classes both share, through a class-map file (README, "Across datasets";
fourtier.evaluation.transfer). Every arm and seed of models/finetune/<train> (of its first official split, for
a dataset run on several) is scored on data/features/<test>, its validation clips (`on: val`) or all of them
(`on: all`), and reported as the evaluate stage reports: per arm top-1/top-5 as mean +- sample std over seeds,
every arm's paired gain over the baseline and FTP's over both controls (data/eval/cross/<train>_to_<test>/)."""
import argparse
import json

import numpy as np

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.data.contract import read_classes
from fourtier.errors import DataError, ParamsError, exits_cleanly
from fourtier.evaluation.metrics import accuracy_metrics, arm_summary, gain_lines, load_classifier, seed_table, top1_line
from fourtier.evaluation.predict import predict
from fourtier.evaluation.transfer import mapped_scores, read_class_map, shared_clips
from fourtier.features.source import open_features
from fourtier.runtime import distributed
from fourtier.runtime.hardware import loader_workers, resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process


@exits_cleanly
@distributed.names_rank
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", help="the target whose stage-2 models are tested")
    parser.add_argument("test", help="the target whose clips they are tested on")
    args = parser.parse_args()
    params = load_params(DataParams, RuntimeGroup)
    entries = [e for e in params.cross_dataset if (e.train, e.test) == (args.train, args.test)]
    if not entries:
        raise ParamsError(f"no entry of 'cross_dataset' in params.yaml tests {args.train!r} on {args.test!r}")
    entry = entries[0]
    relaunch(params.runtime, f"cross-dataset {args.train} -> {args.test}")
    import torch

    torch.set_num_threads(threads_per_process(params.workers))
    device = resolve_device(params.runtime.device)
    distributed.setup(device, params.runtime.timeout_s)
    workers = loader_workers(params.runtime.loader_workers, device)
    test = open_features(paths.features(args.test), paths.raw(args.test), paths.BACKBONE, device)
    train_classes = read_classes(paths.raw(args.train))
    mapping = read_class_map(entry.class_map, train_classes, test.classes)
    fold = test.fold_ids[0]
    pool = np.arange(len(test)) if entry.on == "all" else test.split("val", fold)
    idx, labels, shared = shared_clips(test.labels, pool, test.classes, mapping)
    if len(idx) == 0:
        raise DataError(f"{args.test} has no {'' if entry.on == 'all' else 'validation '}clip of a class that "
                        f"{entry.class_map} maps ({', '.join(shared)})")
    runs = list(paths.finetune_dir(args.train).glob("*-seed*.safetensors"))
    if not runs:
        raise DataError(f"no trained models in {paths.finetune_dir(args.train)}: run finetune first (dvc repro)")
    folds = {paths.finetune_run(p)[1] for p in runs}
    if None in folds and len(folds) > 1:
        raise DataError(f"{paths.finetune_dir(args.train)} holds models of one split and of official splits "
                        f"{sorted(f for f in folds if f)}: re-run finetune {args.train} (dvc repro)")
    first = min(folds, key=lambda f: f or 0)  # a train target run on several splits: its first split's models
    runs = sorted((p for p in runs if paths.finetune_run(p)[1] == first), key=paths.finetune_run)
    results: dict[str, list[dict]] = {}
    for path in runs:
        arm, _, seed = paths.finetune_run(path)
        model = load_classifier(path.with_suffix(""), train_classes).to(device)
        probs = predict(model, test, idx, workers=workers)
        scores = mapped_scores(probs, train_classes, mapping, shared)
        results.setdefault(arm, []).append(accuracy_metrics(scores, labels, shared))
    distributed.teardown()
    if not distributed.is_main():
        return
    seeds = sorted({paths.finetune_run(p)[2] for p in runs})
    metrics = {"train": args.train, "test": args.test, "on": entry.on, "test_clips": int(len(idx)),
               "test_clips_unmapped": int(len(pool) - len(idx)), "shared_classes": len(shared),
               "train_classes_mapped": len(mapping), "seeds": len(seeds), **arm_summary(results)}
    if first:
        metrics["train_split"] = first
    out = paths.cross_evaluation(args.train, args.test)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {**seed_table(results, seeds),
                "per_class": {arm: {c: round(float(np.mean([r["per_class"].get(c, 0.0) for r in rs])), 4)
                                    for c in shared} for arm, rs in results.items()}}
    (out / "runs.json").write_text(json.dumps(per_seed, indent=1) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    line = top1_line(metrics, results)
    print(f"cross-dataset {args.train} -> {args.test}: {len(idx)} clips of {len(shared)} shared classes "
          f"({metrics['test_clips_unmapped']} of unmapped classes left out); top-1 {line}")
    for line in gain_lines(metrics, f"{len(seeds)} seeds"):
        print(line)


if __name__ == "__main__":
    main()
