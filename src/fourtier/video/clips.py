"""Frames for the visual encoder: T frames per clip by segment sampling, as views (temporal clips x spatial crops).

Temporal view j of V: frame floor((k + (j + 1) / (V + 1)) * n / T) for segment k, so views sample
different moments of every segment (sparse sampling). Spatial views: `letterbox` pads the whole frame
to a square (nothing is cut off; one view only), `crop` resizes the short side and takes 1 (centre) or
3 (start, centre, end along the long side) square crops, the usual multi-view test.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from fourtier.errors import VideoError


@dataclass(frozen=True)
class Preprocess:
    frames: int  # T
    size: int  # square side in px
    mode: str  # letterbox or crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def segment_indices(n: int, frames: int, view: int, views: int) -> np.ndarray:
    offset = (view + 1) / (views + 1)
    return np.minimum(((np.arange(frames) + offset) * n / frames).astype(int), n - 1)


def _letterbox(frame: np.ndarray, size: int) -> np.ndarray:
    h, w, _ = frame.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


def _crops(frame: np.ndarray, size: int, n: int) -> list[np.ndarray]:
    h, w, _ = frame.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    big = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.Resampling.BILINEAR))
    starts = [(nw - size) // 2] if n == 1 else [0, (nw - size) // 2, nw - size]
    if nh > nw:
        starts = [(nh - size) // 2] if n == 1 else [0, (nh - size) // 2, nh - size]
        return [big[s:s + size, :size] for s in starts]
    return [big[:size, s:s + size] for s in starts]


def load_views(path: str, pre: Preprocess, temporal_views: int, spatial_views: int) -> np.ndarray:
    """(V, T, size, size, 3) uint8 with V = temporal_views * spatial_views, temporal-major."""
    import decord

    if pre.mode == "letterbox" and spatial_views != 1:
        raise VideoError("letterbox preprocessing keeps the whole frame: use spatial_views: 1")
    try:
        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
        indices = [segment_indices(n, pre.frames, j, temporal_views) for j in range(temporal_views)]
        unique = sorted(set(np.concatenate(indices).tolist()))
        decoded = dict(zip(unique, vr.get_batch(unique).asnumpy()))
    except (decord.DECORDError, RuntimeError) as exc:  # decord raises RuntimeError for a file it cannot open
        raise VideoError(f"decord: {str(exc).splitlines()[0][:200]}") from None
    views = []
    for idx in indices:
        frames = [decoded[i] for i in idx]
        if pre.mode == "letterbox":
            views.append(np.stack([_letterbox(f, pre.size) for f in frames]))
        else:
            per_frame = [_crops(f, pre.size, spatial_views) for f in frames]
            views += [np.stack([crops[s] for crops in per_frame]) for s in range(spatial_views)]
    return np.stack(views)


def to_tensor(frames, pre: Preprocess):
    """uint8 (..., T, H, W, 3), an array or a tensor on any device -> normalised float (..., T, 3, H, W) there."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames).float().div_(255)
    x = (x - torch.tensor(pre.mean, device=x.device)) / torch.tensor(pre.std, device=x.device)
    return x.movedim(-1, -3)
