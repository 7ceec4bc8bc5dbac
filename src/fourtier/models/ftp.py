"""The FTP model (paper §3.1, Figures 2-3), on top of the frozen visual encoder's feature map m.

    m (B, T, h, w, D)  the frozen backbone's output, N = h*w
    processor i        s_i = pool over space (B, T, D), t_i = pool over time (B, N, D), each projected;
                       v_i = [s_i; t_i]  (B, T+N, D)
    alignment head i   (stage 1 only) pools v_i and projects it to the text embedding size, to match e_i
    integration        r_i = v_i replicated onto the T x N grid (s_i along space, t_i along time),
                       projected to D, summed over prompts, added to m:  f = m + sum_i proj_i(r_i)
    classifier         two transformer blocks (MHSA + FFN) over f's tokens, average pooling, linear layer

`prompts: []` gives f = m: the paper's group-1 baseline. Two processors (`align.processor`):
    attention  learned attention pooling with position embeddings, small residual MLPs as projections
    paper      the paper as written (§3.1, Table 1): average pooling, a trainable linear projection
and two stage-1 objectives (`align.objective`): `pooled` matches one vector per v_i with the pooled e_i,
`tokens` gives every v_i token a vector in the text-token space, scored token-wise (fourtier.train.losses). The
README ("The model and its two training stages") compares them. The integration projections start at zero,
so stage 2 starts from the baseline's f = m.

Saved models are two files: `<name>.safetensors` (tensors only: loading one cannot run code, unlike a
pickle from a shared remote) and `<name>.json` (FTPConfig, which parts were saved, and the caller's metadata).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fourtier.config.train import OBJECTIVES, PROCESSORS
from fourtier.errors import DataError
from fourtier.runtime import distributed

FORMAT = "fourtier-ftp/1"
PARTS = ("processors", "align_heads", "integration", "classifier")


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


class PaperProcessor(nn.Module):
    """The paper's processor as written (§3.1, Figure 2(b), Table 1): s_i is m averaged over space, t_i over
    time, each followed by a trainable linear projection (Table 1's Conv1d with kernel 1, applied per token).
    Table 1's maxpool2d has kernel 1 and stride 1, which leaves its input as it is, so the pooling over each axis
    that §3.1 describes is taken as an average here."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj_s = nn.Linear(dim, dim)
        self.proj_t = nn.Linear(dim, dim)

    def forward(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h, w, d = m.shape
        x = m.reshape(b, t, h * w, d)
        return self.proj_s(x.mean(2)), self.proj_t(x.mean(1))


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


class PaperAlignmentHead(nn.Module):
    """Stage 1 only, paper processor: v_i's tokens averaged, then one linear map to the text embedding size (the
    paper matches v_i to e_i directly, their sizes being equal; here D and the text size differ)."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, text_dim)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(v.mean(1)), dim=-1)


class TokenAlignmentHead(nn.Module):
    """Stage 1 only, objective `tokens`: v_i (B, T+N, D) -> one unit vector per token (B, T+N, text_dim), in the
    text encoder's token space. With the attention processor each token first passes a residual MLP (as in
    AlignmentHead); with the paper's, the map is linear."""

    def __init__(self, dim: int, length: int, text_dim: int, mlp: bool):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(length, dim)) if mlp else None
        self.token_mlp = MLP(dim, 2 * dim, dim) if mlp else None
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, text_dim)) if mlp else nn.Linear(dim, text_dim)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        tokens = v
        if self.token_mlp is not None:
            tokens = v + self.pos
            tokens = tokens + self.token_mlp(tokens)
        return F.normalize(self.proj(tokens), dim=-1)


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


class GlobalBatchDropout(nn.Dropout):
    """nn.Dropout whose mask is drawn for the global batch under DDP (fourtier.runtime.distributed.dropout), so the
    world size does not change the experiment."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return distributed.dropout(x, self.p, self.training)


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
        self.drop = GlobalBatchDropout(dropout)

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


class FlatHead(nn.Module):
    """The position-keeping stage-2 head (finetune.head: flat): one linear map of the flattened f, a weight for
    every time, position and channel; weight decay is its only regularisation."""

    def __init__(self, size: int, n_classes: int):
        super().__init__()
        self.head = nn.Linear(size, n_classes)

    def features(self, f: torch.Tensor) -> torch.Tensor:
        return f.flatten(1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(f))


HEADS = ("pooled", "flat")  # the paper's head (Classifier, §3.1) | FlatHead


@dataclass(frozen=True)
class FTPConfig:
    """Everything that fixes the model's shapes. text_dim 0: no alignment heads (stage 2 and inference)."""
    dim: int  # D of the feature map m
    grid: tuple[int, int, int]  # (T, h, w) of m
    prompts: tuple[str, ...] = ()  # () is the baseline
    n_classes: int = 1
    text_dim: int = 0
    processor: str = "attention"  # attention | paper
    objective: str = "pooled"  # pooled | tokens: the shape of the alignment heads' output
    head: str = "pooled"  # the stage-2 classifier: pooled (the paper's) | flat (HEADS)

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "prompts", tuple(self.prompts))

    def replace(self, **changes) -> "FTPConfig":
        return FTPConfig(**{**asdict(self), **changes})


def _files(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def read_saved(path: Path) -> dict:
    """The JSON side of a saved model: {"format", "config", "parts", "meta"}; a clear error if absent or foreign."""
    weights, info = _files(path)
    if not weights.exists() or not info.exists():
        raise DataError(f"{weights} (with {info.name}) not found: re-run the stage that writes it (dvc repro)")
    try:
        saved = json.loads(info.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{info} is not valid JSON ({exc}): re-run the stage that writes it") from None
    if saved.get("format") != FORMAT:
        raise DataError(f"{info} is not a fourtier model of format {FORMAT} (got {saved.get('format')!r}); "
                        "re-run the stage that writes it")
    saved["config"] = FTPConfig(**saved["config"])
    return saved


class FTP(nn.Module):
    """The whole head on top of m. `config.prompts` selects the processors; () is the baseline (f = m)."""

    def __init__(self, config: FTPConfig):
        super().__init__()
        frames, h, w = config.grid
        dim, prompts = config.dim, list(config.prompts)
        self.config = config
        self.prompts = prompts
        if config.processor not in PROCESSORS or config.objective not in OBJECTIVES or config.head not in HEADS:
            raise DataError(f"unknown processor {config.processor!r}, objective {config.objective!r} or head "
                            f"{config.head!r}")
        paper = config.processor == "paper"
        self.processors = nn.ModuleDict(
            {p: PaperProcessor(dim) if paper else FeatureProcessor(dim, frames, h * w) for p in prompts})
        self.align_heads = nn.ModuleDict(
            {p: self._align_head(dim, frames + h * w, config) for p in prompts} if config.text_dim else {})
        self.integration = Integration(dim, prompts)
        self.classifier = (Classifier(dim, frames * h * w, config.n_classes) if config.head == "pooled"
                           else FlatHead(frames * h * w * dim, config.n_classes))

    @staticmethod
    def _align_head(dim: int, length: int, config: FTPConfig) -> nn.Module:
        if config.objective == "tokens":
            return TokenAlignmentHead(dim, length, config.text_dim, mlp=config.processor == "attention")
        if config.processor == "paper":
            return PaperAlignmentHead(dim, config.text_dim)
        return AlignmentHead(dim, length, config.text_dim)

    # --- the saved format: safetensors weights + JSON config, written atomically --------------------------
    def save(self, path: Path, parts: tuple[str, ...] = PARTS, meta: dict | None = None) -> None:
        """Write the tensors of `parts` (top-level modules) to path.safetensors, config and meta to path.json."""
        from safetensors.torch import save_file

        weights, info = _files(path)
        weights.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k.split(".")[0] in parts}
        save_file(state, str(weights) + ".tmp")
        os.replace(str(weights) + ".tmp", weights)
        config = asdict(self.config)
        if config["head"] == "pooled":  # the default is left out: files saved before heads were a choice match
            del config["head"]
        text = json.dumps({"format": FORMAT, "config": config, "parts": list(parts),
                           "meta": meta or {}}, indent=1)
        info.with_suffix(".json.tmp").write_text(text + "\n")
        os.replace(info.with_suffix(".json.tmp"), info)

    @classmethod
    def load(cls, path: Path) -> tuple["FTP", dict]:
        """A saved model with every part the file holds (stage 1: processors and alignment heads; stage 2: the
        whole classifier), and its metadata."""
        saved = read_saved(path)
        model = cls(saved["config"])
        model.load_parts(path, tuple(p for p in saved["parts"] if len(getattr(model, p).state_dict())))
        return model, saved["meta"]

    def load_parts(self, path: Path, parts: tuple[str, ...]) -> None:
        """Load `parts` from a saved model, e.g. stage 1's processors into a stage-2 model. Refuses a file
        whose shapes or prompts differ from this model's, or that lacks a part, naming what differs."""
        from safetensors.torch import load_file

        saved = read_saved(path)
        config = saved["config"]
        for key in ("dim", "grid", "prompts", "processor"):
            if getattr(config, key) != getattr(self.config, key):
                raise DataError(f"{_files(path)[0]} was saved with {key} {getattr(config, key)} but this model has "
                                f"{getattr(self.config, key)}; re-run the stage that writes it (dvc repro)")
        absent = [p for p in parts if p not in saved["parts"]]
        if absent:
            raise DataError(f"{_files(path)[0]} has no {', '.join(absent)} (it holds {', '.join(saved['parts'])})")
        state = {k: v for k, v in load_file(_files(path)[0]).items() if k.split(".")[0] in parts}
        expected = {k for k in self.state_dict() if k.split(".")[0] in parts}
        if set(state) != expected:
            raise DataError(f"{_files(path)[0]} does not match the model: missing {sorted(expected - set(state))[:3]}, "
                            f"unexpected {sorted(set(state) - expected)[:3]}; re-run the stage that writes it")
        self.load_state_dict(state, strict=False)

    def processor_outputs(self, m: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {p: self.processors[p](m) for p in self.prompts}

    def v(self, m: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p: torch.cat(st, dim=1) for p, st in self.processor_outputs(m).items()}

    def align_embeddings(self, m: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 1, per prompt: a unit vector (B, P) to match that prompt's pooled e_i (objective `pooled`), or a
        unit vector per v_i token (B, T+N, P) to score against its token-level e_i (objective `tokens`)."""
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
