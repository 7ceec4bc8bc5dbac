"""The shifted test (README, "A shifted test"): the default run's stage-2 models, trained on the original clips,
tested on new clips of the same classes under SynthAct's `deploy` shift.

    python analysis/shifted_test.py        (after dvc repro; about 3 minutes on 2 cores)

For each target: 50 shifted clips per class are generated (seed 101 for synth-scenes, 102 for synth-motion, in
a scratch folder), their m computed by the committed backbone with the features stage's settings, and every
arm and seed of models/finetune/<target> tested on them with the evaluate stage's multi-view prediction. The
in-domain top-1 is recomputed the same way on data/features/<target> (and must equal data/eval/<target>/
runs.json, which the script checks). Writes analysis/results/shifted/<target>.json (per arm and seed: in-domain
and shifted top-1; per arm: both as mean +- sample std and the drop; FTP's paired gains over the baseline and
both controls on each) and analysis/results/shifted/table.md.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.data import synthact
from fourtier.evaluation.metrics import load_classifier, paired_gain, summarise
from fourtier.evaluation.predict import predict
from fourtier.features.cache import compute_features
from fourtier.features.source import FeatureSource
from fourtier.models.backbone import load_backbone
from fourtier.runtime.launch import threads_per_process

SEEDS = {"synth-scenes": 101, "synth-motion": 102}  # fixed with the definition, before any result
VAL_PER_CLASS = 50
ARMS = ("baseline", "ftp", "random", "shuffled")


def shifted_set(params, target: str, out_dir: Path) -> Path:
    spec = params.dataset(target).model_copy(update={"seed": SEEDS[target], "shift": "deploy", "train_per_class": 0,
                                                     "val_per_class": VAL_PER_CLASS, "name": f"{target}-shifted"})
    synthact.download(spec, out_dir, params.workers)
    return out_dir


def top1(model, source: FeatureSource, idx: np.ndarray) -> float:
    probs = predict(model, source, idx)
    return round(float((probs.argmax(1) == source.labels[idx]).mean()), 4)


def gains(per_seed: dict, key: str) -> dict:
    ftp = [r[key] for r in per_seed["ftp"]]
    return {f"ftp_minus_{arm}": paired_gain(ftp, [r[key] for r in per_seed[arm]]) for arm in ARMS if arm != "ftp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("analysis/results/shifted"))
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(threads_per_process(params.workers))
    backbone = load_backbone(paths.BACKBONE)
    cfg = params.features
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for target in params.targets:
        in_domain = FeatureSource(paths.features(target))
        val = in_domain.split("val")
        with tempfile.TemporaryDirectory(prefix="fourtier-shifted-") as scratch:
            raw = shifted_set(params, target, Path(scratch) / "raw")
            compute_features(backbone, raw, Path(scratch) / "features", cfg.temporal_views, cfg.spatial_views,
                             cfg.batch_size, params.workers)
            shifted = FeatureSource(Path(scratch) / "features")
            assert shifted.classes == in_domain.classes, "the shifted set must have the target's classes"
            every = np.arange(len(shifted))
            per_seed: dict[str, list[dict]] = {}
            for path in sorted(paths.finetune_dir(target).glob("*-seed*.safetensors")):
                arm, seed = path.stem.rsplit("-seed", 1)
                model = load_classifier(path.with_suffix(""), in_domain.classes)
                per_seed.setdefault(arm, []).append({"seed": int(seed), "in_domain": top1(model, in_domain, val),
                                                     "shifted": top1(model, shifted, every)})
                print(f"{target} {arm} seed {seed}: {per_seed[arm][-1]}", flush=True)
            skipped = len(shifted.meta["skipped"])
        for rs in per_seed.values():
            rs.sort(key=lambda r: r["seed"])
        recorded = json.loads((paths.evaluation(target) / "runs.json").read_text())
        for arm, rs in per_seed.items():  # the same models and clips as the evaluate stage: the same numbers
            assert [r["in_domain"] for r in rs] == recorded[arm]["top1"], (target, arm)
        for arm, rs in per_seed.items():
            for r in rs:
                r["drop"] = round(r["in_domain"] - r["shifted"], 4)
        result = {"target": target, "shift": "deploy", "seed": SEEDS[target], "shifted_clips": int(len(every)),
                  "shifted_skipped": skipped, "in_domain_clips": int(len(val)), "runs": per_seed,
                  "arms": {arm: {k: summarise([r[k] for r in rs]) for k in ("in_domain", "shifted", "drop")}
                           for arm, rs in per_seed.items()},
                  "gains": {k: gains(per_seed, k) for k in ("in_domain", "shifted", "drop")}}
        (args.out / f"{target}.json").write_text(json.dumps(result, indent=1) + "\n")
        rows.append(result)
    (args.out / "table.md").write_text(table(rows))
    print(table(rows))


def pct(s: dict) -> str:
    return f"{100 * s['mean']:.1f} +- {100 * s['std']:.1f}"


def gain(g: dict) -> str:
    return f"{100 * g['mean']:+.1f} [{100 * g['ci95_low']:+.1f}, {100 * g['ci95_high']:+.1f}]"


def table(rows: list[dict]) -> str:
    lines = ["# python analysis/shifted_test.py: top-1 (%) in-domain and under the deploy shift, mean +- sample std",
             "# over seeds; FTP's gains paired by seed with their 95% t-interval", "",
             "| target | arm | in-domain | shifted | drop |", "|---|---|---|---|---|"]
    for r in rows:
        for arm in ARMS:
            if arm in r["arms"]:
                a = r["arms"][arm]
                lines.append(f"| {r['target']} | {arm} | {pct(a['in_domain'])} | {pct(a['shifted'])} | {pct(a['drop'])} |")
    lines += ["", "| target | gain | in-domain | shifted | drop (FTP - other: negative = FTP drops less) |",
              "|---|---|---|---|---|"]
    for r in rows:
        for name in r["gains"]["shifted"]:
            lines.append(f"| {r['target']} | {name.replace('_minus_', ' - ')} | {gain(r['gains']['in_domain'][name])} | "
                         f"{gain(r['gains']['shifted'][name])} | {gain(r['gains']['drop'][name])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
