"""Frozen visual encoders. Each one maps a video (B, T, 3, H, W) to the feature map m (B, T', h, w, D).

- `TinyVideoViT` (preset `tiny`): a small video ViT pretrained in the `backbone` stage on SynthAct's coarse
  label, the analogue of a K710-trained encoder. Conv stem down to a grid per frame, learned space and time
  position embeddings, joint space-time transformer layers. Its heads (one per part of the pretraining
  label: motion family and object shape on SynthAct) are used for its pretraining only.
- `HFVideoBackbone`: VideoMAE, TimeSformer, ViViT and the vision side of X-CLIP through transformers. Their
  preprocessing (frames, size, normalisation) comes from their own configs.

`save_backbone` / `load_backbone` keep the exact weights in models/backbone/, so an experiment pins them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from fourtier.errors import FourtierError
from fourtier.video.clips import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(FourtierError):
    pass


class TinyVideoViT(nn.Module):
    """Conv stem per frame, then `tubelet` consecutive frames become one token per grid cell (as VideoMAE's and
    ViViT's tubelet embedding), so m has frames / tubelet time steps; joint space-time attention over them."""

    def __init__(self, frames: int = 8, size: int = 64, dim: int = 96, depth: int = 4, heads: int = 4,
                 head_sizes: tuple[int, ...] = (6, 5), tubelet: int = 1):
        super().__init__()
        if size % 16:
            raise BackboneError(f"tiny backbone: size must be a multiple of 16, got {size}")
        if tubelet < 1 or frames % tubelet:
            raise BackboneError(f"tiny backbone: tubelet must divide frames ({frames}), got {tubelet}")
        self.config = dict(frames=frames, size=size, dim=dim, depth=depth, heads=heads, head_sizes=list(head_sizes),
                           tubelet=tubelet)
        self.grid = size // 16
        self.tubelet = tubelet
        self.stem = nn.Sequential(  # 64 -> 32 -> 16 for size 64, per frame
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
        )
        # 16 -> 4 per frame; with a tubelet, over `tubelet` frames at once. tubelet 1 keeps the 2-d layer that
        # checkpoints saved before tubelets existed hold (stem.4)
        self.patch = (nn.Conv2d(64, dim, 4, stride=4) if tubelet == 1
                      else nn.Conv3d(64, dim, (tubelet, 4, 4), stride=(tubelet, 4, 4)))
        self.pos_space = nn.Parameter(torch.randn(1, 1, self.grid * self.grid, dim) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(1, frames // tubelet, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        # pretraining heads only, one per part of the label ("motion family / shape" on SynthAct)
        # mean and max over tokens: a small object is one token of T*N, and a mean alone dilutes it
        self.heads = nn.ModuleList(nn.Linear(2 * dim, n) for n in head_sizes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, 3, H, W) -> m (B, T / tubelet, h, w, D)."""
        b, t = x.shape[:2]
        z = self.stem(x.flatten(0, 1))  # (B*T, 64, 4h, 4w)
        if self.tubelet == 1:
            z = self.patch(z)  # (B*T, D, h, w)
        else:  # frames into the depth axis of a 3-d patch: (B, 64, T, 4h, 4w) -> (B, D, T', h, w)
            z = self.patch(z.unflatten(0, (b, t)).transpose(1, 2)).transpose(1, 2).flatten(0, 1)
        t = t // self.tubelet
        z = z.flatten(2).transpose(1, 2).reshape(b, t, -1, z.shape[1])  # (B, T', N, D)
        z = z + self.pos_space + self.pos_time[:, :t]
        z = self.norm(self.blocks(z.flatten(1, 2)))
        return z.reshape(b, t, self.grid, self.grid, -1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.feature_map(x).flatten(1, 3)
        pooled = torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)
        return [head(pooled) for head in self.heads]

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        # checkpoints from before the tubelet option kept the last stem layer as stem.4
        state = {("patch." + k[len("stem.4."):] if k.startswith("stem.4.") else k): v for k, v in state.items()}
        return super().load_state_dict(state, strict, assign)


HF_KINDS = ("videomae", "timesformer", "vivit", "xclip")


class HFVideoBackbone(nn.Module):
    """A transformers video model as a feature-map extractor."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        if kind not in HF_KINDS:
            raise BackboneError(f"unsupported video model type {kind!r}; supported: {', '.join(HF_KINDS)}")
        self.model = model.vision_model if kind == "xclip" and hasattr(model, "vision_model") else model
        self.kind = kind
        cfg = self.model.config
        tubelet = getattr(cfg, "tubelet_size", 1)
        if isinstance(tubelet, (list, tuple)):  # ViViT: (time, height, width) of a tubelet, no patch_size
            self.tubelet, self.patch = tubelet[0], tubelet[1]
        else:
            self.tubelet = tubelet
            self.patch = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, height, width = x.shape
        h, w = height // self.patch, width // self.patch
        if self.kind == "xclip":
            hidden = self.model(pixel_values=x.flatten(0, 1)).last_hidden_state[:, 1:]  # drop CLS per frame
            return hidden.reshape(b, t, h, w, -1)
        hidden = self.model(pixel_values=x).last_hidden_state
        if self.kind == "timesformer":
            hidden = hidden[:, 1:]  # drop CLS
            if getattr(self.model.config, "attention_type", "") == "space_only":  # frame by frame: (B*T, N, D)
                return hidden.reshape(b, t, h, w, -1)
            # TimeSformer orders its tokens patch-major (patch, then frame): (B, h, w, T, D) -> (B, T, h, w, D)
            return hidden.reshape(b, h, w, t, -1).permute(0, 3, 1, 2, 4)
        if self.kind == "vivit":
            hidden = hidden[:, 1:]  # drop CLS
        return hidden.reshape(b, t // self.tubelet, h, w, -1)  # VideoMAE, ViViT: time-major


def hf_kind(config) -> str:
    name = type(config).__name__.lower()
    for kind in HF_KINDS:
        if kind in name:
            return kind
    raise BackboneError(f"{type(config).__name__} is not a supported video model ({', '.join(HF_KINDS)})")


def hf_preprocess(model_dir: str, config) -> Preprocess:
    from transformers import AutoImageProcessor

    cfg = config.vision_config if hasattr(config, "vision_config") else config
    try:
        proc = AutoImageProcessor.from_pretrained(model_dir)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except (OSError, ValueError, AttributeError):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    frames = getattr(cfg, "num_frames", None) or 8
    return Preprocess(frames=int(frames), size=int(cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]),
                      mode="crop", mean=mean, std=std)


def tiny_preprocess(config: dict) -> Preprocess:
    return Preprocess(frames=config["frames"], size=config["size"], mode="letterbox", mean=(0.5, 0.5, 0.5),
                      std=(0.25, 0.25, 0.25))


class LoadedBackbone:
    """A frozen backbone with its preprocessing."""

    def __init__(self, module: nn.Module, preprocess: Preprocess, name: str):
        self.module = module.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.name = name

    def to(self, device) -> "LoadedBackbone":
        self.module.to(device)
        return self

    @torch.inference_mode()
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.feature_map(x)


def save_tiny(model: TinyVideoViT, out_dir: Path, extra: dict) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "weights.safetensors")
    (out_dir / "config.json").write_text(json.dumps({"type": "tiny", **model.config, **extra}, indent=1) + "\n")


def obtain_hub_backbone(model_id: str, out_dir: Path, offline: bool = False) -> None:
    """Save a hub video model (weights, config, image processor) into out_dir/hf: a local folder, else the local
    cache, else the hub when it answers (fourtier.runtime.hub.load_pretrained); any failure is a BackboneError."""
    from fourtier.runtime.hub import load_pretrained

    def fetch(local_only: bool):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        config = AutoConfig.from_pretrained(model_id, local_files_only=local_only)
        hf_kind(config)  # fail early on a model that is not a supported video model
        model = AutoModel.from_pretrained(model_id, local_files_only=local_only)
        try:  # from the same place as the model, so a cached model never waits on the network
            processor = AutoImageProcessor.from_pretrained(model_id, local_files_only=local_only)
        except (OSError, ValueError, KeyError, ImportError):
            processor = None  # preprocessing then falls back to ImageNet statistics
        return model, processor

    model, processor = load_pretrained(fetch, model_id, error=BackboneError, what="backbone", fallback="backbone=tiny",
                                       offline=offline)
    model.save_pretrained(out_dir / "hf")
    if processor is not None:
        processor.save_pretrained(out_dir / "hf")
    (out_dir / "config.json").write_text(json.dumps({"type": "hf", "model": model_id}, indent=1) + "\n")


def load_backbone(model_dir: Path) -> LoadedBackbone:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise BackboneError(f"{model_dir} has no backbone: run the backbone stage first (dvc repro backbone)")
    config = json.loads((model_dir / "config.json").read_text())
    if config["type"] == "tiny":
        from safetensors.torch import load_file

        keys = ("frames", "size", "dim", "depth", "heads", "head_sizes")
        model = TinyVideoViT(**{k: config[k] for k in keys}, tubelet=config.get("tubelet", 1))
        model.load_state_dict(load_file(model_dir / "weights.safetensors"))
        return LoadedBackbone(model, tiny_preprocess(config), "tiny")
    from transformers import AutoConfig, AutoModel

    hf_dir = str(model_dir / "hf")
    hf_config = AutoConfig.from_pretrained(hf_dir)
    module = HFVideoBackbone(AutoModel.from_pretrained(hf_dir), hf_kind(hf_config))
    return LoadedBackbone(module, hf_preprocess(hf_dir, hf_config), config.get("model", "hf"))
