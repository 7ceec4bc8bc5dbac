"""Where every artifact lives: the one place stage scripts and the CLI take paths from.

dvc.yaml spells the same paths in its deps and outs; tests/test_dvc_yaml.py checks that the two agree, so
they cannot drift apart.
"""
from __future__ import annotations

import os
from pathlib import Path

BACKBONE = Path("models/backbone")  # the frozen visual encoder (safetensors + config.json)
ALIGN = Path("models/align")  # stage 1: one saved processor set per arm
ALIGN_METRICS = Path("models/align_metrics.json")
FINETUNE = Path("models/finetune")
CLASS_TEXTS = Path("class_texts")  # committed, per dataset: {class: {A, B, C, D: text}}
SOURCES = Path("data/sources")  # what each download reads from outside the workspace (stages/sources.py)
WATCHED = SOURCES / "watch"  # fingerprints of the files of the datasets under `watch:` (stages/watch.py)
# what a stage measured of its own speed (latency, throughput): machine-dependent, so in no stage's outputs and
# not in dvc.lock; dvc.yaml lists the folder as top-level metrics, so `dvc metrics show` prints them
TIMINGS = Path("data/timings")


def cache_dir() -> Path:
    """State kept outside the workspace across runs: the VLM answer cache, batch jobs, resumable checkpoints."""
    return Path(os.environ.get("FOURTIER_CACHE", Path.home() / ".cache" / "fourtier"))


def raw(dataset: str) -> Path:
    return Path("data/raw") / dataset


def tiles(dataset: str) -> Path:
    return Path("data/tiles") / dataset


def captions(dataset: str) -> Path:
    return Path("data/captions") / dataset


def embeddings(dataset: str) -> Path:
    return Path("data/embeddings") / dataset


def features(dataset: str) -> Path:
    return Path("data/features") / dataset


def sources(dataset: str) -> Path:
    return SOURCES / f"{dataset}.json"


def watched(dataset: str) -> Path:
    return WATCHED / f"{dataset}.json"


def class_texts(dataset: str) -> Path:
    """A user's class descriptions per prompt for zero-shot (optional; fourtier.text.classtexts)."""
    return CLASS_TEXTS / f"{dataset}.json"


def align_model(arm: str) -> Path:
    """Stem of a saved stage-1 model (.safetensors + .json)."""
    return ALIGN / arm


def finetune_dir(dataset: str) -> Path:
    return FINETUNE / dataset


def finetune_model(dataset: str, arm: str, seed: int, fold: int | None = None) -> Path:
    """Stem of a saved stage-2 model (.safetensors + .json): <arm>-seed<seed>, or <arm>-split<k>-seed<seed> for
    official split k of a dataset run on several (README, "Three splits")."""
    return finetune_dir(dataset) / (f"{arm}-seed{seed}" if fold is None else f"{arm}-split{fold}-seed{seed}")


def finetune_run(path: Path) -> tuple[str, int | None, int]:
    """(arm, official split or None, seed) of a saved stage-2 model, from its name (finetune_model)."""
    arm, seed = Path(path).stem.rsplit("-seed", 1)
    arm, _, fold = arm.partition("-split")
    return arm, int(fold) if fold else None, int(seed)


def finetune_log(dataset: str) -> Path:
    return Path("dvclive/finetune") / dataset


def evaluation(dataset: str) -> Path:
    return Path("data/eval") / dataset


def cross_evaluation(train: str, test: str) -> Path:
    """A cross-dataset test's outputs: train's stage-2 models on test's shared classes."""
    return Path("data/eval/cross") / f"{train}_to_{test}"


def timings(stage: str, dataset: str) -> Path:
    return TIMINGS / f"{stage}-{dataset}.json"


def stage_io(stage: str, item, corpus: str) -> tuple[set[str], set[str]]:
    """The data deps and outs (as dvc.yaml writes them) of one stage; `item` is the foreach dataset (for
    cross-dataset, the entry's train and test datasets and class map), `corpus` the first pretraining dataset. Code deps are checked separately, from the import closure."""
    s = lambda p: p.as_posix()  # noqa: E731
    if stage in ("download-pretrain", "download-target"):
        return {s(sources(item))}, {s(raw(item))}
    if stage in ("sources-pretrain", "sources-target"):
        return {s(WATCHED)}, {s(sources(item))}
    if stage == "watch":
        return set(), {s(watched(item))}
    if stage == "tile":
        return {s(raw(item))}, {s(tiles(item))}
    if stage == "caption":
        return {s(tiles(item))}, {s(captions(item) / "captions.jsonl"), s(captions(item) / "metrics.json")}
    if stage == "embed":
        return {s(captions(item) / "captions.jsonl")}, {s(embeddings(item))}
    if stage == "backbone":  # its corpus is made in a scratch folder, not read from data/
        return set(), {s(BACKBONE)}
    if stage in ("features-pretrain", "features-target"):
        return {s(BACKBONE), s(raw(item))}, {s(features(item))}
    if stage == "align":
        return ({s(features(corpus)), s(embeddings(corpus)), s(raw(corpus)), s(BACKBONE)},
                {s(ALIGN), s(ALIGN_METRICS)})
    if stage == "finetune":
        return {s(ALIGN), s(features(item)), s(raw(item)), s(BACKBONE)}, {s(finetune_dir(item)), s(finetune_log(item))}
    if stage == "evaluate":
        out = evaluation(item)
        return ({s(finetune_dir(item)), s(BACKBONE), s(features(item)), s(raw(item))},
                {s(out / name) for name in ("metrics.json", "runs.json", "per_class.csv", "confusion_ftp.csv",
                                            "confusion_baseline.csv", "tsne.png")})
    if stage == "cross-dataset":  # item: (train dataset, test dataset, class map)
        train, test, class_map = item
        out = cross_evaluation(train, test)
        return ({class_map, s(finetune_dir(train)), s(raw(train)), s(BACKBONE), s(features(test)), s(raw(test))},
                {s(out / "metrics.json"), s(out / "runs.json")})
    if stage == "zeroshot":
        return ({s(ALIGN), s(features(item)), s(raw(item)), s(BACKBONE), s(CLASS_TEXTS)},
                {s(evaluation(item) / "zeroshot.json")})
    raise KeyError(stage)
