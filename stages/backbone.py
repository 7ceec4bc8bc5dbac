"""backbone stage: obtain the frozen visual encoder once, into models/backbone/.

`tiny` is pretrained here on the pretraining corpus's coarse label (the analogue of a K710 checkpoint);
hub presets are fetched and saved, so the exact weights are versioned with the experiment.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fourtier.clips import to_tensor
from fourtier.data.contract import read_annotations
from fourtier import paths
from fourtier.errors import DataError, exits_cleanly
from fourtier.features import FrameStore
from fourtier.models.backbone import TinyVideoViT, obtain_hub_backbone, save_tiny, tiny_preprocess
from fourtier.params import load_params
from fourtier.pretrain import pretrain_backbone


def label_parts(labels: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    """'family / shape' labels -> one integer target per part, with each part's class names."""
    parts = [label.split(" / ") for label in labels]
    if len({len(p) for p in parts}) != 1:
        raise DataError("pretraining labels must all have the same number of ' / '-separated parts")
    names = [sorted({p[h] for p in parts}) for h in range(len(parts[0]))]
    return np.array([[names[h].index(p[h]) for h in range(len(p))] for p in parts]), names


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=paths.BACKBONE)
    args = parser.parse_args()
    params = load_params()
    preset = params.backbones.get(params.backbone, {"type": "hf", "model": params.backbone.removeprefix("hf:")})
    start = time.perf_counter()
    if preset["type"] != "tiny":
        obtain_hub_backbone(preset["model"], args.out, bool(preset.get("offline", False)))
        print(f"backbone {params.backbone}: saved {preset['model']} to {args.out} in {time.perf_counter() - start:.0f} s")
        return
    torch.set_num_threads(params.workers)
    train = params.backbone_train
    corpus = paths.raw(params.pretrain[0])
    rows = read_annotations(corpus)
    config = {k: preset[k] for k in ("frames", "size", "dim", "depth", "heads")}
    pre = tiny_preprocess(config)
    # decoded once to disk and read a batch at a time: memory is bounded by the batch, not the corpus
    scratch = tempfile.TemporaryDirectory(prefix=".backbone-frames-", dir="data")
    frames = FrameStore(Path(scratch.name), corpus, pre, train.temporal_views, params.workers)
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
    save_tiny(model, args.out, {"head_classes": head_classes, "corpus": corpus.name})
    metrics = {f"heldout_accuracy_{h}": round(result[f"head{i}_accuracy"], 4)
               for i, h in enumerate(["motion_family", "shape"][:len(head_classes)] if len(head_classes) == 2
                                     else [f"head{i}" for i in range(len(head_classes))])}
    # no timings in models/backbone: every later stage depends on that folder, so it must be the same bytes on
    # any machine (the time is printed below)
    metrics.update({"train_clips": int(len(train_idx)), "heldout_clips": int(len(val_idx)),
                    "epochs": train.optim.epochs})
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (args.out / "history.json").write_text(json.dumps(result["history"], indent=1) + "\n")
    print(f"backbone tiny: held-out accuracy {metrics}, {len(rows)} clips, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
