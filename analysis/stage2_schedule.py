"""How long stage 2 must train: the default run's schedule against the reference one, and what a shorter schedule
does to each arm (README, "Two configurations").

    python analysis/stage2_schedule.py                  # after dvc repro; about 10 minutes on 2 cores
    python analysis/stage2_schedule.py --targets synth-scenes synth-motion    # both targets, 19 minutes

The default schedule (15 epochs at batch 8, lr 2e-3) was chosen on the baseline arm alone, in scratch runs with an
earlier build of the backbone: the shortest of those tried whose baseline came within 0.5 pp of the reference
schedule's (40 epochs at batch 32, lr 1e-3). This script measures every arm under both again, and shows why
epochs could not simply be cut at the reference batch: at 15 epochs and batch 32 the baseline is far from
trained, and every arm with processors, the controls too, is ahead of it because it converges faster, not because
of the captions. Every run uses finetune's own code (stage2_model, train_classifier, predict), the workspace's
features and stage-1 models, and the default's seeds; the default schedule's numbers are the evaluate stage's own
(data/eval/<target>/runs.json), which this code would reproduce exactly, and its seeds 0-2 alone show what 3
seeds would resolve. Writes analysis/results/stage2_schedule.md.
"""
import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.evaluation.metrics import paired_gain, summarise
from fourtier.evaluation.predict import predict
from fourtier.features.source import FeatureSource
from fourtier.runtime.parallel import run_parallel, run_slots
from fourtier.train.finetune import stage2_model, train_classifier
from headline import ARMS, gain_cell, spread_cell

ALL = list(ARMS)
# (name, epochs, batch, lr, arms); the default schedule is read from the default run instead of retrained
SCHEDULES = [
    ("reference: 40 epochs, batch 32, lr 1e-3", 40, 32, 1e-3, ALL),
    ("40 epochs cut to 15, batch 32, lr 1e-3", 15, 32, 1e-3, ALL),
    ("10 epochs, batch 32, lr 1e-3", 10, 32, 1e-3, ["baseline"]),
    ("20 epochs, batch 32, lr 1e-3", 20, 32, 1e-3, ["baseline"]),
    ("30 epochs, batch 32, lr 1e-3", 30, 32, 1e-3, ["baseline"]),
    ("12 epochs, batch 8, lr 2e-3", 12, 8, 2e-3, ["baseline"]),
]
DEFAULT = "default: 15 epochs, batch 8, lr 2e-3 (the default run)"
# the first 3 seeds of the default run are exactly a 3-seed run (a seed fixes the initial weights and batches)
THREE = "default schedule, its seeds 0-2 only"


def run(job, step) -> tuple[str, float]:
    """One arm and seed under one schedule: validation top-1 of the trained model."""
    target, arm, seed, epochs, batch, lr = job
    params = load_params()
    cfg = params.finetune
    source = FeatureSource(paths.features(target))
    optim = dataclasses.replace(cfg.optim, epochs=epochs, batch_size=batch, lr=lr)
    model = stage2_model(arm, list(params.prompts), source.dim, source.grid, len(source.classes), seed)
    train_classifier(model, source, source.split("train"), source.labels, optim, seed, cfg.label_smoothing,
                     cfg.mixup_alpha, cfg.mixup_prob, on_epoch=step)
    val = source.split("val")
    return "", float((predict(model, source, val).argmax(1) == source.labels[val]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=["synth-scenes"])
    parser.add_argument("--out", type=Path, default=Path("analysis/results/stage2_schedule.md"))
    args = parser.parse_args()
    params = load_params()
    seeds = list(params.finetune.seeds)
    processes, threads = run_slots(2, params.workers, "cpu")
    lines = ["# python analysis/stage2_schedule.py: stage 2's schedule, every arm trained with finetune's code", "",
             f"Validation top-1 (%), mean +- sample std over seeds {seeds}; gains in pp, paired by seed, with their "
             "95% t-intervals.", ""]
    for target in args.targets:
        results = {DEFAULT: json.loads((paths.evaluation(target) / "runs.json").read_text())}
        results[DEFAULT] = {arm: results[DEFAULT][arm]["top1"] for arm in ALL}
        results[THREE] = {arm: v[:3] for arm, v in results[DEFAULT].items()}
        for name, epochs, batch, lr, arms in SCHEDULES:
            jobs = [(target, arm, seed, epochs, batch, lr) for arm in arms for seed in seeds]
            values = run_parallel(run, jobs, processes, threads, f"{target}: {name}", epochs)
            results[name] = {arm: values[i * len(seeds):(i + 1) * len(seeds)] for i, arm in enumerate(arms)}
            print(f"{target}, {name}: " + ", ".join(f"{arm} {100 * np.mean(v):.1f}" for arm, v in results[name].items()),
                  flush=True)
        lines += [f"## {target}", "", "| schedule | " + " | ".join(ALL) + " | FTP - baseline | FTP - random | "
                  "FTP - shuffled |", "|---" * 8 + "|"]
        for name in [SCHEDULES[0][0], DEFAULT, THREE] + [s[0] for s in SCHEDULES[1:]]:
            r = results[name]
            cells = [spread_cell(summarise(r[arm])) if arm in r else "" for arm in ALL]
            cells += [gain_cell(paired_gain(r["ftp"], r[other])) if "ftp" in r and other in r else ""
                      for other in ("baseline", "random", "shuffled")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
