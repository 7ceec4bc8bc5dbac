"""Stage 2 with a linear head on the whole f, against the default head (two transformer blocks, mean pooling).

    python analysis/stage2_heads.py      (after dvc repro; about 4 minutes on 2 cores)
    python analysis/stage2_heads.py --out analysis/results/stage2_heads-<experiment>.md   (another run's outputs)

A linear probe on the full m reaches 60.2% on synth-motion (analysis/linear_probe.py) while every stage-2 arm
stays near 45%: is the default head what loses the motion classes, and does FTP gain once the head can use
where and when things are? Each arm and seed of the default run is trained again with stage 2's own recipe
(finetune's optimiser, epochs, label smoothing and mixup; the same processors and batches), with the classifier
replaced by one linear map of the flattened f (T x h x w x D -> classes; weight decay is its only
regularisation). Every arm of a seed starts from the same linear head (drawn from the seed), and the
integration starts at zero, as in finetune. Validation top-1 with every cached view, as `evaluate` scores.

Writes what it prints to analysis/results/stage2_heads.md (or --out): per target and arm, top-1 of the default head
(data/eval/<target>/metrics.json) and of the linear head, mean +- sample std over seeds, and the paired gains
FTP - baseline and FTP - each control with their 95% t-intervals.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.evaluation.metrics import paired_gain, summarise
from fourtier.evaluation.predict import predict
from fourtier.features.source import FeatureSource
from fourtier.train.finetune import stage2_model, train_classifier
from fourtier.train.optim import seed_everything
from headline import gain_cell, read_runs, spread_cell


class LinearHead(nn.Module):
    """One linear map of the flattened f: a weight for every position, time and channel."""

    def __init__(self, size: int, n_classes: int):
        super().__init__()
        self.head = nn.Linear(size, n_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f.flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("analysis/results/stage2_heads.md"))
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.workers)
    cfg = params.finetune
    lines = ["# python analysis/stage2_heads.py: stage 2 with a linear head on the flattened f against the default "
             "head", "", "Validation top-1 (%), mean +- sample std over seeds "
             f"{list(cfg.seeds)}; gains paired by seed with their 95% t-interval.", ""]
    for ds in params.targets:
        source = FeatureSource(paths.features(ds))
        train_idx, val_idx = source.split("train"), source.split("val")
        default = read_runs(paths.evaluation(ds) / "metrics.json")
        linear = {}
        for arm in cfg.arms:
            linear[arm] = []
            for seed in cfg.seeds:
                model = stage2_model(arm, list(params.prompts), source.dim, source.grid, len(source.classes), seed)
                seed_everything(seed)  # every arm of a seed: the same linear head
                model.classifier = LinearHead(int(np.prod(source.grid)) * source.dim, len(source.classes))
                train_classifier(model, source, train_idx, source.labels, cfg.optim, seed, cfg.label_smoothing,
                                 cfg.mixup_alpha, cfg.mixup_prob, tag=f"{ds} {arm} {seed}",
                                 desc=f"{ds} {arm} seed {seed} (linear head)")
                top1 = float((predict(model, source, val_idx).argmax(1) == source.labels[val_idx]).mean())
                linear[arm].append(top1)
                print(f"{ds} {arm} seed {seed}: linear head top-1 {100 * top1:.1f}%", flush=True)
        lines += [f"## {ds}", "", "| arm | default head | linear head | linear - default |", "|---|---|---|---|"]
        for arm in cfg.arms:
            runs = default[arm]["top1"]
            lines.append(f"| {arm} | {spread_cell(summarise(runs))} | {spread_cell(summarise(linear[arm]))} | "
                         f"{gain_cell(paired_gain(linear[arm], runs))} |")
        lines += ["", "| linear head | gain |", "|---|---|"]
        for other in [a for a in cfg.arms if a != "ftp"]:
            lines.append(f"| ftp - {other} | {gain_cell(paired_gain(linear['ftp'], linear[other]))} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
