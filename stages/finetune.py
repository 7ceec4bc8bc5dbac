"""finetune stage (training stage 2), per target dataset: backbone and processors frozen; the integration
projection, the two transformer blocks and the classifier train with cross-entropy.

Every arm in finetune.arms is trained for every seed in finetune.seeds:
  baseline  no processors (prompts: []), the paper's group 1
  ftp       processors from stage 1 on the real captions
  random    the same processors untrained: the gain from capacity alone
  shuffled  processors from stage 1 on captions permuted across videos: the gain without their meaning
A crash loses at most one epoch: each run checkpoints every epoch and resumes from there.
Data parallel under `torchrun --nproc_per_node N stages/finetune.py DATASET` (see fourtier.distributed).
"""
import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from fourtier.captioning import cache_dir
from fourtier import distributed
from fourtier.errors import DataError, exits_cleanly
from fourtier.features import FeatureSource, open_features
from fourtier.models.ftp import FTP
from fourtier.params import load_params
from fourtier.runtime import loader_workers, resolve_device
from fourtier.training import OptimSettings, seed_everything, train_classifier

ARMS = ("baseline", "ftp", "random", "shuffled")


def build_model(arm: str, prompts: list[str], source: FeatureSource, n_classes: int, align_dir: Path) -> FTP:
    model = FTP(source.dim, source.grid, [] if arm == "baseline" else prompts, n_classes)
    if arm != "baseline":
        if not (align_dir / f"{arm}.pt").exists():
            raise DataError(f"{align_dir / arm}.pt is missing: align trains the arms in finetune.arms; re-run align "
                            "(dvc repro)")
        saved = torch.load(align_dir / f"{arm}.pt", weights_only=False)
        if saved["config"]["prompts"] != prompts or saved["config"]["dim"] != source.dim:
            raise DataError(f"models/align/{arm}.pt was trained for prompts {saved['config']['prompts']} and dim "
                            f"{saved['config']['dim']}; re-run align (dvc repro)")
        state = {k: v for k, v in saved["state"].items() if k.startswith("processors.")}
        missing = model.load_state_dict(state, strict=False)
        if any(k.startswith("processors.") for k in missing.missing_keys):
            raise DataError(f"models/align/{arm}.pt does not match the processors: re-run align")
    return model


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    args = parser.parse_args()
    params = load_params()
    params.dataset(args.dataset)
    device = resolve_device(params.runtime.device)
    distributed.setup(device)
    torch.set_num_threads(max(1, params.workers // distributed.world()))
    workers = loader_workers(params.runtime.loader_workers, device)
    cfg = params.raw["finetune"]
    source = open_features(Path("data/features") / args.dataset, Path("data/raw") / args.dataset,
                           Path("models/backbone"), device)
    train_idx = source.split("train")
    prompts = list(params.prompts)
    out = Path("models/finetune") / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    settings = OptimSettings(cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["weight_decay"], tuple(cfg["betas"]),
                             cfg["warmup_epochs"])
    align_dir = Path("models/align")
    run_key = hashlib.sha256(json.dumps(["checkpoint v2", args.dataset, device.type, cfg, prompts, source.meta["shape"],
                                         [hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(align_dir.glob("*.pt"))]],
                                        sort_keys=True).encode()).hexdigest()[:16]
    checkpoints = cache_dir() / "checkpoints" / run_key
    checkpoints.mkdir(parents=True, exist_ok=True)
    from dvclive import Live

    for arm in cfg["arms"]:
        if arm != "baseline" and not prompts:
            print(f"finetune {args.dataset}: arm {arm} skipped (prompts: [] leaves only the baseline)")
            continue
        for seed in cfg["seeds"]:
            start = time.perf_counter()
            seed_everything(seed)
            model = build_model(arm, prompts, source, len(source.classes), align_dir)
            live = Live(str(Path("dvclive/finetune") / args.dataset / f"{arm}-seed{seed}"), dvcyaml=False,
                        save_dvc_exp=False, report=None) if distributed.is_main() else None
            history = train_classifier(model, source, train_idx, source.labels, settings, seed,
                                       cfg["label_smoothing"], cfg["mixup_alpha"], cfg["mixup_prob"],
                                       checkpoint=checkpoints / f"{arm}-{seed}.pt", live=live, tag="train",
                                       desc=f"finetune {args.dataset} {arm} seed {seed}", device=device,
                                       workers=workers)
            if live is not None:
                live.end()
            if not distributed.is_main():
                continue
            state = {k: v for k, v in model.cpu().state_dict().items() if not k.startswith("align_heads.")}
            torch.save({"config": model.config, "classes": source.classes, "arm": arm, "seed": seed,
                        "backbone": source.meta["backbone"], "state": state}, out / f"{arm}-seed{seed}.pt")
            print(f"finetune {args.dataset} {arm} seed {seed}: final loss {history[-1]['loss']:.3f} "
                  f"[{time.perf_counter() - start:.0f} s]")
    distributed.barrier()
    if distributed.is_main():
        shutil.rmtree(checkpoints, ignore_errors=True)
    distributed.teardown()


if __name__ == "__main__":
    main()
