"""Zero-shot recognition with stage 1 alone: no stage-2 training on the target.

Per prompt i, the alignment head maps the video's v_i to a unit vector in the text space of prompt i's
answers; each class has a text for prompt i (fourtier.text.classtexts), encoded by the same text encoder as the
answers. The score of class c is the sum over prompts of cos(head_i(v_i), e_i(c)), averaged over the views;
the prediction is its argmax. Each prompt alone is reported too. A score is a dot product, linear in the
aligned embedding, so the views are averaged before scoring: one pass over m serves every set of class texts.
With `align.objective: tokens` the score is the token-wise one (fourtier.train.losses.token_scores) between each
v_i token's vector, averaged over the views and renormalised, and the class text's tokens.
"""
from __future__ import annotations

import numpy as np
import torch

from fourtier.config.base import PROMPT_IDS


def encode_class_texts(texts: dict[str, dict[str, str]], classes: list[str], encoder, objective: str = "pooled") -> dict:
    """{prompt: (C, d) unit vectors}, the pooled embeddings of each class's text for that prompt; for objective
    `tokens`, {prompt: ((C, L, d) unit token vectors, (C, L) mask)}."""
    return {p: encode_texts(encoder, [texts[c][p] for c in classes], objective) for p in PROMPT_IDS}


def encode_texts(encoder, texts: list[str], objective: str = "pooled"):
    """Texts as the stage-1 objective scores them: (n, d) unit pooled vectors, or for `tokens` ((n, L, d) unit
    token vectors, (n, L) mask)."""
    enc = encoder.encode(texts)
    if objective == "tokens":
        return torch.nn.functional.normalize(torch.from_numpy(enc.tokens).float(), dim=-1), torch.from_numpy(enc.mask)
    return torch.from_numpy(enc.pooled).float()


@torch.inference_mode()
def aligned_embeddings(model, m: torch.Tensor) -> torch.Tensor:
    """(B, P, d): each clip's unit vector per prompt of the model, in that prompt's text space."""
    return torch.stack(list(model.align_embeddings(m).values()), 1)


def aligned_over_views(model, source, idx: np.ndarray, workers: int = 0) -> np.ndarray:
    """(N, P, d) aligned embeddings averaged over every cached view (multi-view testing, as `evaluate` does)."""
    from fourtier.evaluation.predict import over_views  # the loop that predict and evaluate use

    return over_views(lambda m: aligned_embeddings(model, m), model, source, idx, 128, workers)


def class_scores(aligned, class_emb: dict, prompts: list[str], objective: str = "pooled") -> np.ndarray:
    """(N, P, C): per prompt, the dot product of each clip's (view-averaged) aligned embedding with each class
    text's unit vector: the cosine, averaged over the views. For objective `tokens`, the token-wise score."""
    from fourtier.train.losses import pairwise_scores

    aligned = torch.as_tensor(aligned).float().cpu()
    if objective == "tokens":
        aligned = torch.nn.functional.normalize(aligned, dim=-1)
    return torch.stack([pairwise_scores(aligned[:, i], class_emb[p], objective) for i, p in enumerate(prompts)],
                       1).numpy()


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    return float((np.argsort(-scores, 1)[:, :k] == labels[:, None]).any(1).mean())


def zero_shot_metrics(scores: np.ndarray, labels: np.ndarray, prompts: list[str]) -> dict:
    """top-1/top-5 per prompt and combined (sum over prompts), with chance."""
    n_classes = scores.shape[-1]
    out = {"combined": {"top1": topk_accuracy(scores.sum(1), labels, 1), "top5": topk_accuracy(scores.sum(1), labels, 5)}}
    for i, p in enumerate(prompts):
        out[p] = {"top1": topk_accuracy(scores[:, i], labels, 1), "top5": topk_accuracy(scores[:, i], labels, 5)}
    out["chance"] = {"top1": 1 / n_classes, "top5": min(5, n_classes) / n_classes}
    return {k: {m: round(v, 4) for m, v in d.items()} for k, d in out.items()}
