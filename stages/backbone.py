"""backbone stage: obtain the frozen visual encoder once, into models/backbone/.

`tiny` is pretrained here on the coarse label of `backbone_train.corpus` (the analogue of a K710 checkpoint),
a dataset that this stage downloads or generates into a scratch folder and deletes afterwards: the encoder is
a frozen, versioned artifact like a hub checkpoint, so neither a fresh clone nor a change to the captioned
stage-1 corpus (`pretrain`) has to make its corpus again. Hub presets are fetched and saved, so the exact weights
are versioned with the experiment.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fourtier import paths
from fourtier.config.base import load_params, resolve_preset
from fourtier.config.data import DataParams
from fourtier.config.model import ModelGroup
from fourtier.config.runtime import RuntimeGroup
from fourtier.data import registry
from fourtier.data.contract import read_annotations
from fourtier.errors import DataError, exits_cleanly
from fourtier.features.frames import FrameStore
from fourtier.models.backbone import TinyVideoViT, obtain_hub_backbone, save_tiny, tiny_preprocess
from fourtier.train.pretrain import pretrain_backbone
from fourtier.video.clips import to_tensor


def label_parts(labels: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    """'family / shape' labels -> one integer target per part, with each part's class names."""
    parts = [label.split(" / ") for label in labels]
    if len({len(p) for p in parts}) != 1:
        raise DataError("pretraining labels must all have the same number of ' / '-separated parts")
    names = [sorted({p[h] for p in parts}) for h in range(len(parts[0]))]
    return np.array([[names[h].index(p[h]) for h in range(len(p))] for p in parts]), names


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished `new` folder where `target` is, in two renames: the old backbone stays until the new one
    is whole (dvc.yaml keeps it with `persist: true`, so DVC does not delete it before the stage runs)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=paths.BACKBONE)
    args = parser.parse_args()
    params = load_params(DataParams, ModelGroup, RuntimeGroup)
    # written aside and swapped in on success: a failed run (an unknown hub id, a crash) leaves the old one
    work = args.out.with_name(f".{args.out.name}.new")
    shutil.rmtree(work, ignore_errors=True)
    build(params, work)
    replace_dir(work, args.out)


def build(params, out: Path) -> None:
    """The backbone of `params` into the empty folder `out`."""
    preset = resolve_preset(params.backbone, params.backbones)
    start = time.perf_counter()
    if preset["type"] != "tiny":
        obtain_hub_backbone(preset["model"], out, bool(preset.get("offline", False)))
        print(f"backbone {params.backbone}: saved {preset['model']} in {time.perf_counter() - start:.0f} s")
        return
    torch.set_num_threads(params.workers)
    train = params.backbone_train
    config = {k: preset[k] for k in ("frames", "size", "dim", "depth", "heads")}
    config["tubelet"] = int(preset.get("tubelet", 1))
    pre = tiny_preprocess(config)
    # the corpus, then its clips decoded once, in a scratch folder: memory is bounded by the batch, not the corpus
    scratch = tempfile.TemporaryDirectory(prefix=".backbone-frames-", dir="data")
    corpus = Path(scratch.name) / train.corpus
    manifest = registry.download(params.dataset(train.corpus), corpus, params.workers)
    print(f"backbone tiny: corpus {train.corpus}, {manifest['num_videos']} clips", flush=True)
    rows = read_annotations(corpus)
    frames = FrameStore(Path(scratch.name) / "frames", corpus, pre, train.temporal_views, params.workers)
    kept = frames.kept
    targets, head_classes = label_parts([r.label for r in kept])
    splits = np.array([r.split for r in kept])
    train_idx, val_idx = np.nonzero(splits == "train")[0], np.nonzero(splits != "train")[0]
    if len(val_idx) == 0:
        raise DataError(f"{corpus.name} has no held-out clips to report the backbone's accuracy on")
    torch.manual_seed(train.seed)
    model = TinyVideoViT(**config, head_sizes=tuple(len(c) for c in head_classes))
    result = pretrain_backbone(model, frames, targets, train_idx, val_idx, lambda x: to_tensor(x, pre), train.optim,
                               train.seed, train.flips, train.time_reversal)
    scratch.cleanup()
    save_tiny(model, out, {"head_classes": head_classes, "corpus": train.corpus})
    metrics = {f"heldout_accuracy_{h}": round(result[f"head{i}_accuracy"], 4)
               for i, h in enumerate(["motion_family", "shape"][:len(head_classes)] if len(head_classes) == 2
                                     else [f"head{i}" for i in range(len(head_classes))])}
    # no timings in models/backbone: every later stage depends on that folder, so it must be the same bytes on
    # any machine (the time is printed below)
    metrics.update({"train_clips": int(len(train_idx)), "heldout_clips": int(len(val_idx)),
                    "epochs": train.optim.epochs})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "history.json").write_text(json.dumps(result["history"], indent=1) + "\n")
    print(f"backbone tiny: held-out accuracy {metrics}, {len(rows)} clips, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
