"""Video-to-text retrieval (stage 1's metric), ranked a chunk of videos at a time, with its exact
chance level."""
from __future__ import annotations

import numpy as np
import torch

from fourtier.train.losses import token_scores
from fourtier.train.targets import TokenTargets


def retrieval(z: np.ndarray, e: np.ndarray, groups: np.ndarray, ks=(1, 5), chunk: int = 2048, score=None) -> dict:
    """Video-to-text retrieval: a hit when one of the top-k texts is the video's own answer (or identical to it).
    Chance is exact for a random ranking: 1 - C(n - g, k) / C(n, k), g = copies of the right text.
    Similarities are ranked `chunk` videos at a time: memory is chunk x n, not n x n (66,000 held-out K710
    clips would need 17 GB at once)."""
    from math import comb

    n = len(z)
    score = score or (lambda z_chunk: z_chunk @ e.T)  # score(z_chunk) -> (chunk, n): token_scores for `tokens`
    top = np.concatenate([np.argsort(-score(z[start:start + chunk]), axis=1)[:, :max(ks)]
                          for start in range(0, n, chunk)])
    out = {}
    for k in ks:
        hits = (groups[top[:, :k]] == groups[:, None]).any(1)
        sizes = np.bincount(groups)[groups]
        chance = np.mean([1 - comb(n - g, k) / comb(n, k) for g in sizes])
        out[f"R@{k}"] = float(hits.mean())
        out[f"chance_R@{k}"] = float(chance)
    return out


@torch.inference_mode()
def token_scores_chunked(z: np.ndarray, tokens: TokenTargets, idx: np.ndarray, col: int, device: torch.device,
                         chunk: int = 256) -> np.ndarray:
    """token_scores of videos z (B, U, P) against the texts of clips idx, `chunk` texts at a time: memory is
    B x chunk x L x U, whatever the number of texts."""
    z = torch.from_numpy(z).to(device)
    return torch.cat([token_scores(z, *tokens.batch(idx[start:start + chunk], col, device))
                      for start in range(0, len(idx), chunk)], 1).cpu().numpy()
