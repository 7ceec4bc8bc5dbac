"""What a trained stage-1 model carries about direction: does it score a held-out clip's own answer above the same
answer with the direction swapped (left <-> right, rising <-> falling, growing <-> shrinking)? Swapped shape and
colour are the comparison.

    python analysis/swap_discrimination.py --label default   (after dvc repro or a dvc exp run)

For every held-out clip of the pretraining corpus (split val) and every prompt of the stage-1 model
(models/align/<arm>), each answer that contains one phrase of a pair is paired with itself with the phrase
swapped for the other, in both directions (a -> b for answers with a, b -> a for answers with b). Both are encoded whole by the pipeline's text encoder, and scored against the clip the way the model's
objective scores (align.objective: cosine of the pooled vectors, or fourtier.train.losses.token_scores), with the
clip's alignment output averaged over its views. Reported per pair of phrases, over all prompts' answers:
  answers      with phrase a, with phrase b
  prefers own  per direction, the fraction scored above their swapped twin
  balanced     the mean of the two: a model that merely favours one of the words everywhere scores 0.5, one
               that cannot see the swap scores 0.5, one that reads it from the video scores near 1
  95%          the normal-approximation interval of `balanced` (the two directions' answers are independent)
  margin       the mean score difference, own minus swapped, over both directions
Writes analysis/results/swap_discrimination-<label>.txt.
"""
import argparse
import re
from pathlib import Path

import numpy as np
import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.evaluation.zeroshot import aligned_over_views, encode_texts
from fourtier.features.source import open_features
from fourtier.models.ftp import FTP
from fourtier.text.embed import read_captions
from fourtier.text.encoder import make_encoder
from fourtier.train.losses import pairwise_scores

PAIRS = [("direction", "to the left", "to the right"), ("direction", "rising", "falling"),
         ("direction", "growing larger", "shrinking"), ("shape", "ball", "box"), ("colour", "red", "blue")]


def swap_differences(model, aligned, answers, row, encoder, objective: str, old: str, new: str) -> np.ndarray:
    """Score of each held-out answer containing `old` minus the score of its twin with `new` in its place."""
    pattern, other = re.compile(rf"\b{re.escape(old)}\b"), re.compile(rf"\b{re.escape(new)}\b")
    own, swapped, where = [], [], []
    for j, p in enumerate(model.prompts):
        for video, i in row.items():
            text = answers.get((video, p), "")
            if pattern.search(text) and not other.search(text):
                own.append(text)
                swapped.append(pattern.sub(new, text))
                where.append((i, j))
    diffs = [np.zeros(0)]
    for start in range(0, len(own), 64):
        z = torch.stack([aligned[i, j] for i, j in where[start:start + 64]])
        s_own = pairwise_scores(z, encode_texts(encoder, own[start:start + 64], objective), objective).diagonal()
        s_swap = pairwise_scores(z, encode_texts(encoder, swapped[start:start + 64], objective), objective).diagonal()
        diffs.append((s_own - s_swap).numpy())  # the diagonal: each clip against its own pair only
    return np.concatenate(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="names the output file, e.g. default")
    parser.add_argument("--arm", default="ftp", help="stage-1 arm under models/align (default ftp)")
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.workers)
    corpus = params.pretrain[0]
    model, _ = FTP.load(paths.align_model(args.arm))
    objective = model.config.objective
    source = open_features(paths.features(corpus), paths.raw(corpus), paths.BACKBONE, torch.device("cpu"))
    idx = np.nonzero(source.splits != "train")[0]
    aligned = torch.from_numpy(aligned_over_views(model, source, idx))  # (N, prompts, [U,] P), averaged views
    aligned = torch.nn.functional.normalize(aligned, dim=-1)
    row = {v: i for i, v in enumerate(np.asarray(source.videos)[idx])}
    answers = {(r["video_id"], r["prompt_id"]): r["answer"]
               for r in read_captions(paths.captions(corpus) / "captions.jsonl") if r["video_id"] in row}
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length)
    lines = [f"# python analysis/swap_discrimination.py --label {args.label} --arm {args.arm}: align.processor "
             f"{model.config.processor}, align.objective {objective}, prompts {','.join(model.prompts)}, "
             f"{len(idx)} held-out clips of {corpus}",
             "| kind | pair a / b | answers (a, b) | prefers own, a -> b | prefers own, b -> a | balanced | 95% | margin |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, a, b in PAIRS:
        rates, counts, margins = [], [], []
        for old, new in ((a, b), (b, a)):
            diff = swap_differences(model, aligned, answers, row, encoder, objective, old, new)
            counts.append(len(diff))
            rates.append((diff > 0).mean() if len(diff) else float("nan"))
            margins.append(diff)
        margin = np.concatenate(margins)
        half = 1.96 * np.sqrt(sum(r * (1 - r) / max(n, 1) for r, n in zip(rates, counts))) / 2
        balanced = np.mean(rates)
        lines.append(f"| {kind} | {a} / {b} | {counts[0]}, {counts[1]} | {rates[0]:.3f} | {rates[1]:.3f} | "
                     f"{balanced:.3f} | [{balanced - half:.2f}, {balanced + half:.2f}] | "
                     f"{margin.mean() if len(margin) else float('nan'):+.4f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = Path(f"analysis/results/swap_discrimination-{args.label}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
