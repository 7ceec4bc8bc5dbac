"""Zero-shot recognition with stage 1 alone: no stage-2 training on the target.

Per prompt i, the alignment head maps the video's v_i to a unit vector in the text space of prompt i's
answers; each class has a text for prompt i (fourtier.classtexts), encoded by the same text encoder as the
answers. The score of class c is the sum over prompts of cos(head_i(v_i), e_i(c)), averaged over the views;
the prediction is its argmax. Each prompt alone is reported too.
"""
from __future__ import annotations

import numpy as np
import torch

from fourtier.params import PROMPT_IDS


def encode_class_texts(texts: dict[str, dict[str, str]], classes: list[str], encoder) -> dict[str, torch.Tensor]:
    """{prompt: (C, d) unit vectors}, the pooled embeddings of each class's text for that prompt."""
    return {p: torch.from_numpy(encoder.encode([texts[c][p] for c in classes]).pooled).float() for p in PROMPT_IDS}


@torch.inference_mode()
def prompt_scores(model, m: torch.Tensor, class_emb: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, P, C): per prompt of the model, the cosine of each clip's aligned embedding with each class text."""
    aligned = model.align_embeddings(m)
    return torch.stack([aligned[p] @ class_emb[p].to(aligned[p].device).t() for p in model.prompts], 1)


def scores_over_views(model, source, idx: np.ndarray, class_emb: dict[str, torch.Tensor], workers: int = 0) -> np.ndarray:
    """(N, P, C) prompt scores averaged over every cached view (multi-view testing, as `evaluate` does)."""
    from fourtier.training import over_views  # the loop that predict and evaluate use

    return over_views(lambda m: prompt_scores(model, m, class_emb), model, source, idx, 128, workers)


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
