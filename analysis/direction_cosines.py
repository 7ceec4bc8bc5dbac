"""How much of a one-word change reaches the text embeddings stage 1 aligns with: swapped directions (left/right,
rising/falling, growing/shrinking) against swapped shape, colour and scene, on real answers of the default corpus.

    python analysis/direction_cosines.py [--answers 200]   (after dvc repro; about a minute on 2 cores)

For each swap, up to N answers of the pretraining corpus that contain the phrase (drawn at random, seed 0, from
all four prompts' answers) are paired with the same answer with the phrase swapped, and the two are encoded with the pipeline's text encoder. Reported, as means over the
pairs:
  pooled cosine          the pooled e_i that stage 1 matches today (1.0 = the swap is invisible)
  token mean max-sim     each token's best cosine among the other answer's tokens, averaged: what a token-wise
                         objective (each text token matched to its most similar token) would score
  token min max-sim      the same for the least-matched token: how far the swapped word itself moves
  beyond max_tokens      answers whose phrase starts after the first `embed.max_tokens` tokens, which the
                         stored token-level e_i cut off
Writes the table to analysis/results/direction_cosines.txt.
"""
import argparse
import re
from pathlib import Path

import numpy as np
import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.text.embed import read_captions
from fourtier.text.encoder import make_encoder

SWAPS = [("direction", "to the left", "to the right"), ("direction", "rising", "falling"),
         ("direction", "growing larger", "shrinking"), ("shape", "ball", "box"), ("colour", "red", "blue"),
         ("scene", "a grass field", "a snowy slope")]
OUT = Path("analysis/results/direction_cosines.txt")


def pair_scores(encoder, first: list[str], second: list[str]) -> dict:
    a, b = encoder.encode(first), encoder.encode(second)
    pooled = np.sum(a.pooled * b.pooled, axis=1)  # both unit vectors
    mean_max, min_max = [], []
    for i in range(len(first)):
        ta, tb = a.tokens[i][a.mask[i]], b.tokens[i][b.mask[i]]
        ta = ta / np.linalg.norm(ta, axis=1, keepdims=True)
        tb = tb / np.linalg.norm(tb, axis=1, keepdims=True)
        best = (ta @ tb.T).max(axis=1)
        mean_max.append(best.mean())
        min_max.append(best.min())
    return {"pooled": float(pooled.mean()), "mean_max": float(np.mean(mean_max)), "min_max": float(np.mean(min_max))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=200, help="answers per swap")
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.workers)
    encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length)
    answers = sorted({r["answer"] for r in read_captions(paths.captions(params.pretrain[0]) / "captions.jsonl")})
    lines = [f"# python analysis/direction_cosines.py --answers {args.answers} (text encoder {params.text_encoder}, "
             f"embed.max_tokens {params.embed.max_tokens})",
             "| kind | swap | pairs | pooled cosine | token mean max-sim | token min max-sim | beyond max_tokens |",
             "|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for kind, old, new in SWAPS:
        pattern, other = re.compile(rf"\b{re.escape(old)}\b"), re.compile(rf"\b{re.escape(new)}\b")
        found = [a for a in answers if pattern.search(a) and not other.search(a)]
        chosen = [found[i] for i in sorted(rng.choice(len(found), min(args.answers, len(found)), replace=False))]
        if not chosen:
            lines.append(f"| {kind} | {old} -> {new} | 0 | - | - | - | - |")
            continue
        swapped = [pattern.sub(new, a, count=1) for a in chosen]
        scores = pair_scores(encoder, chosen, swapped)
        # tokens before the phrase (the tokenizer adds [CLS] and [SEP]: one of them precedes the text)
        late = sum(len(encoder.tokenizer(a[:pattern.search(a).start()])["input_ids"]) - 1 >= params.embed.max_tokens
                   for a in chosen)
        lines.append(f"| {kind} | {old} -> {new} | {len(chosen)} | {scores['pooled']:.3f} | {scores['mean_max']:.3f} | "
                     f"{scores['min_max']:.3f} | {late / len(chosen):.0%} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
