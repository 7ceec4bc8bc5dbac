"""Zero-shot with the classifier (issue: "Zero-shot with the classifier"): late fusion of the stage-1 zero-shot
scores with the stage-2 classifier, against each alone.

    python analysis/late_fusion.py        (after dvc repro; about 1 minute on 2 cores)

Per target and seed: p = (1 - w) * p_classifier + w * softmax(s / tau), where s is the FTP stage-1 model's
zero-shot score of each class (the sum over prompts of the cosines with the class's description texts, or the
templates where a dataset has no descriptions; as the zeroshot stage scores them) and tau = 0.01 (CLIP's logit
scale of 100 on cosines). The weight w is chosen on the target's training clips alone, from 0, 0.05, ..., 1 (the
smallest w of the best training top-1), then applied to the validation clips. The classifier is the FTP arm's
and, for comparison, the baseline's. Writes analysis/results/late_fusion/<target>.json and table.md: top-1 of
the classifier, of zero-shot alone, of the fusion, the chosen w per seed, and fusion - classifier paired by seed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.errors import DataError
from fourtier.evaluation.metrics import load_classifier, paired_gain, summarise
from fourtier.evaluation.predict import predict
from fourtier.evaluation.zeroshot import aligned_over_views, class_scores, encode_class_texts
from fourtier.features.source import FeatureSource
from fourtier.models.ftp import FTP
from fourtier.runtime.launch import threads_per_process
from fourtier.text.classtexts import class_texts
from fourtier.text.encoder import make_encoder

TAU = 0.01
WEIGHTS = np.round(np.arange(0, 1.0001, 0.05), 2)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def top1(p: np.ndarray, labels: np.ndarray) -> float:
    return round(float((p.argmax(1) == labels).mean()), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("analysis/results/late_fusion"))
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(threads_per_process(params.workers))
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length)
    stage1, _ = FTP.load(paths.align_model("ftp"))
    stage1.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for target in params.targets:
        source = FeatureSource(paths.features(target))
        train, val = source.split("train"), source.split("val")
        try:
            texts, kind = class_texts("description", source.classes, params.dataset(target),
                                      paths.class_texts(target)), "description"
        except DataError:
            texts, kind = class_texts("template", source.classes), "template"
        emb = encode_class_texts(texts, source.classes, encoder, stage1.config.objective)
        zero_shot = {}
        for name, idx in (("train", train), ("val", val)):
            s = class_scores(aligned_over_views(stage1, source, idx), emb, stage1.prompts, stage1.config.objective)
            zero_shot[name] = softmax(s.sum(1) / TAU)
        result = {"target": target, "texts": kind, "tau": TAU, "zero_shot_top1": top1(zero_shot["val"], source.labels[val]),
                  "arms": {}}
        for arm in ("ftp", "baseline"):
            runs = []
            for path in sorted(paths.finetune_dir(target).glob(f"{arm}-seed*.safetensors")):
                model = load_classifier(path.with_suffix(""), source.classes)
                p_train, p_val = predict(model, source, train), predict(model, source, val)
                train_top1 = [top1((1 - w) * p_train + w * zero_shot["train"], source.labels[train]) for w in WEIGHTS]
                w = float(WEIGHTS[int(np.argmax(train_top1))])  # the first best: the smallest weight
                runs.append({"seed": int(path.stem.rsplit("-seed", 1)[1]), "w": w,
                             "classifier": top1(p_val, source.labels[val]),
                             "fused": top1((1 - w) * p_val + w * zero_shot["val"], source.labels[val]),
                             "train_classifier": train_top1[0]})
                print(f"{target} {arm}: {runs[-1]}", flush=True)
            runs.sort(key=lambda r: r["seed"])
            result["arms"][arm] = {"runs": runs,
                                   "classifier": summarise([r["classifier"] for r in runs]),
                                   "fused": summarise([r["fused"] for r in runs]),
                                   "fused_minus_classifier": paired_gain([r["fused"] for r in runs],
                                                                         [r["classifier"] for r in runs])}
        (args.out / f"{target}.json").write_text(json.dumps(result, indent=1) + "\n")
        rows.append(result)
    (args.out / "table.md").write_text(table(rows))
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = ["# python analysis/late_fusion.py: validation top-1 (%), mean +- sample std over seeds; w chosen on the",
             "# training clips; fused - classifier paired by seed with its 95% t-interval", "",
             "| target | classifier arm | zero-shot alone | classifier | fused | w per seed | fused - classifier |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for arm, a in r["arms"].items():
            g = a["fused_minus_classifier"]
            ci = f" [{100 * g['ci95_low']:+.1f}, {100 * g['ci95_high']:+.1f}]" if "ci95_low" in g else ""
            lines.append(f"| {r['target']} | {arm} | {100 * r['zero_shot_top1']:.1f} ({r['texts']} texts) | "
                         f"{100 * a['classifier']['mean']:.1f} +- {100 * a['classifier']['std']:.1f} | "
                         f"{100 * a['fused']['mean']:.1f} +- {100 * a['fused']['std']:.1f} | "
                         f"{', '.join(str(x['w']) for x in a['runs'])} | {100 * g['mean']:+.1f}{ci} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
