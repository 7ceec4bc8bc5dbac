"""zeroshot stage, per target dataset: classify its validation clips with stage 1 alone (no stage-2 training on
the target), from class texts per prompt, for every stage-1 arm (data/eval/<ds>/zeroshot.json).

Class texts: `template` (a sentence per prompt around the class name) always; `description` when the dataset
has descriptions (SynthAct's, written from its class definitions, or class_texts/<ds>.json). The shuffled and
random arms are the controls: their heads never learned what captions mean, so they should sit near chance.
With runtime.nproc_per_node x nnodes above 1 the clips are dealt out to the ranks and gathered (the same
bytes); rank 0 scores and writes.
"""
import argparse
import json
import time

import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.config.text import TextGroup
from fourtier.config.train import TrainGroup
from fourtier.errors import DataError, exits_cleanly
from fourtier.evaluation.zeroshot import aligned_over_views, class_scores, encode_class_texts, zero_shot_metrics
from fourtier.features.source import open_features
from fourtier.models.ftp import FTP
from fourtier.runtime import distributed
from fourtier.runtime.hardware import loader_workers, resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process
from fourtier.text.classtexts import class_texts
from fourtier.text.encoder import make_encoder


@exits_cleanly
@distributed.names_rank
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    args = parser.parse_args()
    params = load_params(DataParams, TextGroup, TrainGroup, RuntimeGroup)
    spec = params.dataset(args.dataset)
    relaunch(params.runtime, f"zeroshot {args.dataset}")
    torch.set_num_threads(threads_per_process(params.workers))
    device = resolve_device(params.runtime.device)
    distributed.setup(device, params.runtime.timeout_s)
    main_rank = distributed.is_main()
    workers = loader_workers(params.runtime.loader_workers, device)
    start = time.perf_counter()
    source = open_features(paths.features(args.dataset), paths.raw(args.dataset), paths.BACKBONE, device)
    idx = source.split("val")  # the clips `evaluate` scores
    labels = source.labels[idx]
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length, str(device))
    kinds = {"template": class_texts("template", source.classes)}
    try:
        kinds["description"] = class_texts("description", source.classes, spec, paths.class_texts(args.dataset))
    except DataError as exc:
        if main_rank:
            print(f"zeroshot {args.dataset}: descriptions skipped ({exc})")
    arms = [arm for arm in ("ftp", "shuffled", "random") if paths.align_model(arm).with_suffix(".json").exists()]
    metrics = {"val_clips": int(len(idx)), "classes": len(source.classes), "prompts": list(params.prompts),
               "texts": kinds}
    if not arms and main_rank:
        print(f"zeroshot {args.dataset}: no stage-1 model (prompts: [] trains none); nothing to score")
    class_emb = {}  # per kind of text and stage-1 objective (the arms of one align run share it)
    metrics.update({kind: {} for kind in kinds})
    for arm in arms:  # one pass over m per arm, scored against every kind of class text
        model, _ = FTP.load(paths.align_model(arm))
        objective = model.config.objective
        aligned = aligned_over_views(model.to(device), source, idx, workers)  # every rank gets all clips
        if not main_rank:
            continue
        for kind in kinds:
            if (kind, objective) not in class_emb:
                class_emb[kind, objective] = encode_class_texts(kinds[kind], source.classes, encoder, objective)
            scores = class_scores(aligned, class_emb[kind, objective], model.prompts, objective)
            metrics[kind][arm] = zero_shot_metrics(scores, labels, model.prompts)
    distributed.teardown()
    if not main_rank:
        return
    out = paths.evaluation(args.dataset) / "zeroshot.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1) + "\n")
    for kind in kinds:
        line = ", ".join(f"{arm} {100 * r['combined']['top1']:.1f}%" for arm, r in metrics[kind].items())
        chance = 100 / len(source.classes)
        print(f"zeroshot {args.dataset} ({kind} texts): top-1 {line} (chance {chance:.1f}%) "
              f"[{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
