"""Stage 1's text targets e_i, pooled or token-level, read from the embed stage's arrays a batch at
a time, so memory is bounded by the batch, not the corpus."""
from __future__ import annotations

import numpy as np
import torch


class TokenTargets:
    """Token-level e_i for the token-wise objective, read from the embed stage's memory-mapped arrays a batch at
    a time, so memory is bounded by the batch. rows[i]: the embeddings row of the source's clip i (the shuffled
    control permutes it)."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, rows: np.ndarray):
        self.tokens, self.mask, self.rows = tokens, mask, np.asarray(rows)

    def batch(self, idx: np.ndarray, col: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit token vectors (n, L, P) and mask (n, L) of prompt column `col` for clips idx, trimmed to the
        longest answer among them (padding costs compute in token_scores)."""
        rows = self.rows[np.asarray(idx)]
        order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads from the memory map
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        mask = np.asarray(self.mask[rows[order], col])[back]
        length = max(1, int(mask.any(0).nonzero()[0].max(initial=0)) + 1)
        tokens = torch.from_numpy(np.asarray(self.tokens[rows[order], col, :length])[back])
        # float16 goes to the device, which casts and normalises: on a GPU that work left the CPU thread that
        # feeds it, where it took half of each epoch (benchmarks/results/stage1_cost_h100.jsonl)
        e = torch.nn.functional.normalize(tokens.to(device).float(), dim=-1)
        return e, torch.from_numpy(mask[:, :length]).to(device)


class PooledTargets:
    """Pooled text embeddings (the embed stage's (N, 4, P) float16) for stage 1, read a batch at a time, so
    memory is bounded by the batch, not the corpus (3 KB per clip: 2 GB at K710's size). rows[i]: the embeddings
    row of the source's clip i (the shuffled control permutes it); by default clip i is row i."""

    def __init__(self, pooled, rows=None):
        self.pooled = pooled
        self.rows = np.arange(len(pooled)) if rows is None else np.asarray(rows)

    @property
    def dim(self) -> int:
        return self.pooled.shape[-1]

    def take(self, idx: np.ndarray, col: int | None = None) -> np.ndarray:
        """The float16 rows (n, 4, P), or of prompt column `col` (n, P), of clips idx in idx's order."""
        rows = self.rows[np.asarray(idx)]
        order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        part = self.pooled[rows[order]] if col is None else self.pooled[rows[order], col]
        return np.asarray(part)[back]

    def batch(self, idx: np.ndarray, cols: list[int], device: torch.device) -> list[torch.Tensor]:
        """Per prompt column in `cols`, the unit text embeddings (n, P) float32 of clips idx."""
        e = torch.from_numpy(np.asarray(self.take(idx)[:, cols], dtype=np.float32))
        # contiguous (n, prompts, P), as the whole array indexed by the batch was: the same strides, the same bytes
        return list(torch.nn.functional.normalize(e, dim=-1).contiguous().to(device).unbind(1))

    def groups(self, col: int, chunk: int = 4096) -> np.ndarray:
        """caption_groups of prompt column `col` over every clip, read `chunk` clips at a time: rows with the
        same bytes (identical answers) share an id, numbered in order of first appearance (the same partition
        as caption_groups; InfoNCE and retrieval only compare ids)."""
        import hashlib

        ids: dict[bytes, int] = {}
        out = np.empty(len(self.rows), np.int64)
        for start in range(0, len(self.rows), chunk):
            part = np.ascontiguousarray(self.take(np.arange(start, min(start + chunk, len(self.rows))), col))
            for j, row in enumerate(part):
                digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
                out[start + j] = ids.setdefault(digest, len(ids))
        return out


def as_pooled_targets(pooled) -> PooledTargets:
    """PooledTargets as given, or over an array (N, 4, P) aligned with the source's clips."""
    return pooled if isinstance(pooled, PooledTargets) else PooledTargets(pooled)
