"""Multi-view testing (paper §4.1): a model's outputs averaged over every cached view, the chunks
dealt out to the ranks under torchrun and gathered."""
from __future__ import annotations

import numpy as np
import torch

from fourtier.features.batches import batch_loader
from fourtier.runtime import distributed


def eval_keys(idx: np.ndarray, n_views: int, batch_size: int, starts=None):
    """Multi-view testing order: each chunk of clips once per view, view 0 first; `starts`: only the chunks
    that begin there (default: all)."""
    for start in (range(0, len(idx), batch_size) if starts is None else starts):
        chunk = np.asarray(idx[start:start + batch_size])
        for v in range(n_views):
            yield chunk, np.full(len(chunk), v)


@torch.inference_mode()
def predict(model, source, idx: np.ndarray, batch_size: int = 128, workers: int = 0) -> np.ndarray:
    """Multi-view testing: softmax averaged over every cached view (temporal clips x spatial crops)."""
    return over_views(lambda m: model(m).softmax(-1), model, source, idx, batch_size, workers)


@torch.inference_mode()
def classifier_features(model, source, idx: np.ndarray, batch_size: int = 128, workers: int = 0) -> np.ndarray:
    """The classifier's pooled features (before its linear layer), averaged over the cached views."""
    return over_views(lambda m: model.classifier.features(model.f(m)), model, source, idx, batch_size, workers)


def over_views(fn, model, source, idx: np.ndarray, batch_size: int, workers: int) -> np.ndarray:
    """fn over the views of clips idx, averaged. Under torchrun the chunks of batch_size clips are dealt out to
    the ranks and gathered: every chunk is computed as one process computes it (the same bytes), and every rank
    returns the whole result."""
    model.eval()
    dev = next(model.parameters()).device
    starts = list(range(0, len(idx), batch_size))[distributed.rank()::distributed.world()]
    batches = iter(batch_loader(source, eval_keys(idx, source.n_views, batch_size, starts), workers, dev))
    out = {}
    for start in starts:
        total = sum(fn(source.to_m(next(batches), dev)) for _ in range(source.n_views))
        out[start] = (total / source.n_views).cpu().numpy()
    parts = {start: value for shard in distributed.gather_objects(out) for start, value in shard.items()}
    return np.concatenate([parts[start] for start in sorted(parts)])
