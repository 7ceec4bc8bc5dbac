"""The FTP model (paper §3.1, Figures 2-3), on top of the frozen visual encoder's feature map m.

    m (B, T, h, w, D)  the frozen backbone's output, N = h*w
    processor i        s_i = pool over space (B, T, D), t_i = pool over time (B, N, D), each projected;
                       v_i = [s_i; t_i]  (B, T+N, D)
    alignment head i   (stage 1 only) pools v_i and projects it to the text embedding size, to match e_i
    integration        r_i = v_i replicated onto the T x N grid (s_i along space, t_i along time),
                       projected to D, summed over prompts, added to m:  f = m + sum_i proj_i(r_i)
    classifier         two transformer blocks (MHSA + FFN) over f's tokens, average pooling, linear layer

`prompts: []` gives f = m: the paper's group-1 baseline. Pooling is learned attention pooling and the
projections are small residual MLPs: a mean-pool + linear version learned almost nothing in stage 1
(DESIGN.md §3). The integration projections start at zero, so stage 2 starts from the baseline's f = m.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, x):
        return self.net(x)


class AttentionPool(nn.Module):
    """Pool the second-to-last axis of (..., L, D) with `queries` learned queries (outputs concatenated).

    A learned position embedding over the L pooled positions lets the weights depend on where/when.
    """

    def __init__(self, dim: int, length: int, queries: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pos = nn.Parameter(torch.zeros(length, dim))
        self.query = nn.Parameter(torch.randn(queries, dim) * dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.norm(x) + self.pos
        weights = torch.softmax(keys @ self.query.t() / keys.shape[-1] ** 0.5, dim=-2)  # (..., L, Q)
        pooled = weights.transpose(-1, -2) @ x  # (..., Q, D)
        return pooled.flatten(-2)


class FeatureProcessor(nn.Module):
    """Figure 2(b): m -> (s_i, t_i); v_i is their concatenation."""

    def __init__(self, dim: int, frames: int, tokens: int):
        super().__init__()
        self.spatial_pool = AttentionPool(dim, tokens)  # over N, for each frame
        self.temporal_pool = AttentionPool(dim, frames)  # over T, for each position
        self.proj_s = MLP(dim, 2 * dim, dim)
        self.proj_t = MLP(dim, 2 * dim, dim)

    def forward(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h, w, d = m.shape
        x = m.reshape(b, t, h * w, d)
        s = self.spatial_pool(x)  # (B, T, D)
        s = s + self.proj_s(s)
        t_ = self.temporal_pool(x.transpose(1, 2))  # (B, N, D)
        t_ = t_ + self.proj_t(t_)
        return s, t_


class AlignmentHead(nn.Module):
    """Stage 1 only: v_i (B, T+N, D) -> unit vector in the text embedding space."""

    def __init__(self, dim: int, length: int, text_dim: int, queries: int = 4):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(length, dim))
        self.token_mlp = MLP(dim, 2 * dim, dim)
        self.pool = AttentionPool(dim, length, queries)
        self.proj = nn.Sequential(nn.LayerNorm(queries * dim), nn.Linear(queries * dim, text_dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        tokens = v + self.pos
        tokens = tokens + self.token_mlp(tokens)
        return F.normalize(self.proj(self.pool(tokens)), dim=-1)


class Integration(nn.Module):
    """Figure 3: replicate each v_i onto the T x N grid, project to D, sum over prompts, add to m."""

    def __init__(self, dim: int, prompts: list[str]):
        super().__init__()
        self.proj = nn.ModuleDict({p: nn.Linear(2 * dim, dim) for p in prompts})
        for layer in self.proj.values():  # zero: stage 2 starts from f = m
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, m: torch.Tensor, v: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        b, t, h, w, d = m.shape
        f = m.reshape(b, t, h * w, d)
        for prompt, (s_i, t_i) in v.items():
            # proj_i(r_i) with r_i = [s_i replicated over space; t_i replicated over time], computed as
            # W_s s_i + W_t t_i + b then broadcast: the same linear map without materialising r_i
            weight, bias = self.proj[prompt].weight, self.proj[prompt].bias
            f = f + (s_i @ weight[:, :d].t())[:, :, None, :] + (t_i @ weight[:, d:].t() + bias)[:, None, :, :]
        return f.reshape(b, t, h, w, d)


class Block(nn.Module):
    """A pre-norm transformer block (MHSA + FFN). Dropout on the residual branches only, not on the attention
    map (as in ViT): attention-map dropout more than doubled the CPU step time."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.ffn(self.norm2(x)))


class Classifier(nn.Module):
    """Two transformer blocks over f's T*N tokens (with position embeddings), average pooling, linear layer."""

    def __init__(self, dim: int, tokens: int, n_classes: int, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(Block(dim, heads, 2 * dim, dropout), Block(dim, heads, 2 * dim, dropout))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def features(self, f: torch.Tensor) -> torch.Tensor:
        x = f.flatten(1, 3) + self.pos
        return self.norm(self.blocks(x)).mean(1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(f))


class FTP(nn.Module):
    """The whole head on top of m. `prompts` selects the processors; [] is the baseline (f = m)."""

    def __init__(self, dim: int, grid: tuple[int, int, int], prompts: list[str], n_classes: int, text_dim: int = 0):
        super().__init__()
        frames, h, w = grid
        self.config = dict(dim=dim, grid=list(grid), prompts=list(prompts), n_classes=n_classes, text_dim=text_dim)
        self.prompts = list(prompts)
        self.processors = nn.ModuleDict({p: FeatureProcessor(dim, frames, h * w) for p in prompts})
        self.align_heads = nn.ModuleDict(
            {p: AlignmentHead(dim, frames + h * w, text_dim) for p in prompts} if text_dim else {})
        self.integration = Integration(dim, prompts)
        self.classifier = Classifier(dim, frames * h * w, n_classes)

    def processor_outputs(self, m: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {p: self.processors[p](m) for p in self.prompts}

    def v(self, m: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p: torch.cat(st, dim=1) for p, st in self.processor_outputs(m).items()}

    def align_embeddings(self, m: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 1: one unit vector per prompt, to be matched with that prompt's pooled e_i."""
        return {p: self.align_heads[p](v_i) for p, v_i in self.v(m).items()}

    def f(self, m: torch.Tensor) -> torch.Tensor:
        return self.integration(m, self.processor_outputs(m)) if self.prompts else m

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.f(m))

    # which parameters each stage trains
    def stage1_parameters(self):
        return list(self.processors.parameters()) + list(self.align_heads.parameters())

    def stage2_parameters(self):
        return list(self.integration.parameters()) + list(self.classifier.parameters())
