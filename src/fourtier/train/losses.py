"""Stage 1's objective: symmetric InfoNCE on pooled or token-wise video-to-text scores (paper §3.2),
with identical answers as shared positives."""
from __future__ import annotations

import numpy as np
import torch


def caption_groups(pooled: np.ndarray) -> np.ndarray:
    """Group id per row: rows with identical text embeddings (identical answers) share a group."""
    _, groups = np.unique(np.ascontiguousarray(pooled).view(np.dtype((np.void, pooled.dtype.itemsize * pooled.shape[1]))),
                          return_inverse=True)
    return groups.reshape(-1)


def info_nce(z: torch.Tensor, e, groups: torch.Tensor, logit_scale: torch.Tensor, objective: str = "pooled") -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives, on the objective's video-to-text scores (pairwise_scores) of a
    batch. Videos whose answers are identical are all positives (soft targets), so the same sentence is never
    pushed away from itself."""
    logits = pairwise_scores(z, e, objective, scale=logit_scale.exp().clamp(max=100))
    same = (groups[:, None] == groups[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-targets * logits.log_softmax(1), 1).mean() + torch.sum(-targets * logits.t().log_softmax(1), 1).mean())


def token_scores(z: torch.Tensor, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The token-wise score of objective `tokens` (text to video, as in FILIP): score[j, k] is the mean, over the
    tokens of text k, of each token's best cosine with any token of video j. z (B, U, P) and e (C, L, P) are unit
    vectors, mask (C, L) marks real text tokens. Returns (B, C)."""
    best = torch.einsum("bup,clp->bclu", z, e).amax(-1)  # (B, C, L); max's backward keeps indices only
    weight = mask.to(best.dtype)
    return (best * weight).sum(-1) / weight.sum(-1).clamp(min=1)


def pairwise_scores(z: torch.Tensor, e, objective: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Video-to-text scores (B, C): cosines of pooled vectors, or token_scores for e = (tokens, mask); times
    `scale` when given (InfoNCE's logits). Pooled scores scale z before the product: B x P multiplies, not B x C."""
    if objective == "tokens":
        scores = token_scores(z, *e)
        return scores if scale is None else scale * scores
    return z @ e.t() if scale is None else (scale * z) @ e.t()
