"""`fourtier plan`: the bill before the run. For the configured datasets, backbone and K: clips, disk per stage
output, the memory bound of the streaming stages, and time per stage from measured rates, with a warning when
the m cache would not fit on the free disk.

Rates come from benchmarks/results/scale.jsonl (written by benchmarks/scale.py on the machine that ran it; run
it on yours for your figures) and benchmarks/results/gpu_h100.jsonl (a ViT-B backbone on one H100).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from fourtier import paths

# Approximate clip counts of the public datasets (train + validation), used before they are downloaded.
PUBLIC_CLIPS = {"ucf101": 13_320, "hmdb51": 6_766, "k400": 260_000, "k600": 420_000, "k700": 580_000,
                "k710": 660_000, "ssv2": 193_000}
# Input frames and feature-map shape per view (T', h, w, D) of the hub presets, at 224 px.
HUB_INPUT_FRAMES = {"videomae": 16, "timesformer": 8, "vivit": 32, "xclip": 8}
HUB_VIEW_SHAPE = {"videomae": (8, 14, 14, 768), "timesformer": (8, 14, 14, 768), "vivit": (16, 14, 14, 768),
                  "xclip": (8, 14, 14, 768)}
# Bytes per clip of stage outputs where nothing is on disk yet (measured on SynthAct; public video at 320 px)
RAW_BYTES = {"synthact": 22_000, "public": 1_500_000}
TILE_BYTES, CAPTION_BYTES = 29_000, 2_100


def _clips(params, name: str) -> tuple[int, str]:
    ann = paths.raw(name) / "annotations.csv"
    if ann.exists():
        return sum(1 for _ in open(ann)) - 1, "downloaded"
    spec = params.datasets[name]
    if spec.kind == "synthact":
        if spec.variant == "pretrain":
            return spec.clips, "params"
        classes = 10 if spec.variant == "scenes" else 12
        return classes * (spec.train_per_class + spec.val_per_class), "params"
    key = name if name in PUBLIC_CLIPS else getattr(spec, "kind", "")
    return PUBLIC_CLIPS.get(key, 0), "approx." if key in PUBLIC_CLIPS else "unknown until downloaded"


def _hub_config_shape(model: str):
    """(T', h, w, D) and (frames, size) of a hub or local video model from its own config, if that config is on
    this machine (a local folder, the Hugging Face cache, or models/backbone after the backbone stage); else None."""
    try:
        from transformers import AutoConfig

        from fourtier.models.backbone import hf_kind

        config = AutoConfig.from_pretrained(model, local_files_only=True)
        kind = hf_kind(config)
    except Exception:  # not on this machine (or not a video model): the caller falls back to the name
        return None
    cfg = getattr(config, "vision_config", config)
    size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
    tubelet = getattr(cfg, "tubelet_size", 1)
    tubelet, patch = (tubelet[0], tubelet[1]) if isinstance(tubelet, (list, tuple)) else (tubelet, getattr(cfg, "patch_size", 16))
    patch = patch if isinstance(patch, int) else patch[0]
    frames = int(getattr(cfg, "num_frames", None) or 8)
    grid = size // patch
    return (frames // tubelet, grid, grid, cfg.hidden_size), (frames, size), kind


def view_shape(params) -> tuple[tuple[int, ...], tuple[int, int], str]:
    """m per view, and (frames, size) of the backbone's input: from the model's config where it is on this machine,
    else from the preset's name (a ViT-B at 224 px)."""
    preset = params.backbones.get(params.backbone, {"type": "hf", "model": params.backbone.removeprefix("hf:")})
    if preset["type"] == "tiny":
        g = preset["size"] // 16
        frames = preset["frames"] // int(preset.get("tubelet", 1))
        return (frames, g, g, preset["dim"]), (preset["frames"], preset["size"]), "tiny"
    model = str(preset.get("model", ""))
    saved = paths.BACKBONE / "config.json"
    if saved.exists() and json.loads(saved.read_text()).get("model") == model:
        model = str(paths.BACKBONE / "hf")  # what the backbone stage saved: no hub look-up
    found = _hub_config_shape(model)
    if found is not None:
        return found
    for kind, shape in HUB_VIEW_SHAPE.items():
        if kind in model.lower():
            return shape, (HUB_INPUT_FRAMES[kind], 224), f"{kind} (assumed from the name)"
    return HUB_VIEW_SHAPE["videomae"], (16, 224), "ViT-B (assumed)"


def _rates(path: Path) -> dict[str, float]:
    """clips/s per stage at the largest corpus measured."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    best: dict[str, dict] = {}
    for r in rows:
        if r["stage"] not in best or r["clips"] >= best[r["stage"]]["clips"]:
            best[r["stage"]] = r
    return {stage: r["clips_per_s"] for stage, r in best.items()}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan(params, root: Path = Path(".")) -> str:
    feats, rt = params.features, params.runtime
    m_shape, (frames, size), backbone_kind = view_shape(params)
    views = feats.temporal_views * feats.spatial_views
    m_clip = views * int(np.prod(m_shape)) * 2
    embed_clip = 4 * params.embed.max_tokens * (384 + 1) * 2 + 4 * 384 * 2
    cpu_rates = _rates(root / "benchmarks" / "results" / "scale.jsonl")
    gpu = [json.loads(x) for x in (root / "benchmarks/results/gpu_h100.jsonl").read_text().splitlines()] \
        if (root / "benchmarks/results/gpu_h100.jsonl").exists() else []
    gpu_rates: dict[str, float] = {}  # the best measured rate of the committed code per stage
    for r in gpu:
        stage = {"features": "features", "align epoch (cached m)": "align"}.get(r["stage"])
        if stage and r["device"] == "cuda" and "shared memory" in r.get("code", ""):
            gpu_rates[stage] = max(gpu_rates.get(stage, 0.0), r["clips_per_s"])
    lines = [f"backbone {params.backbone} ({backbone_kind}): m per view {m_shape} float16, {views} views per clip "
             f"= {_size(m_clip)} per clip; K={params.K}; device {rt.device}", ""]
    lines.append("| dataset | role | clips | raw | tiles | captions | embeddings | m (features) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    total_m, pretrain_clips = 0, 0
    for role, names in (("pretrain", params.pretrain), ("target", params.targets)):
        for name in names:
            n, how = _clips(params, name)
            spec = params.datasets[name]
            raw = RAW_BYTES["synthact" if spec.kind == "synthact" else "public"]
            m = n * m_clip if feats.cache else 0
            total_m += m
            stage1 = role == "pretrain"
            pretrain_clips += n if stage1 else 0
            lines.append(f"| {name} | {role} | {n:,} ({how}) | {_size(n * raw)} | "
                         f"{_size(n * TILE_BYTES) if stage1 else '-'} | {_size(n * CAPTION_BYTES) if stage1 else '-'} | "
                         f"{_size(n * embed_clip) if stage1 else '-'} | {_size(m) if feats.cache else 'not cached'} |")
    free = shutil.disk_usage(root).free
    lines += ["", f"m cache in all: {_size(total_m)}; free disk here: {_size(free)}"]
    if total_m > free:
        lines.append(f"WARNING: the m cache ({_size(total_m)}) does not fit on the free disk ({_size(free)}): free space, "
                     "point data/ at a larger disk, or set features.cache: false (m computed on the fly)")
    buffered = rt.workers * 4 + 2  # batches in flight: prefetch 4 per loader worker, one decoding, one on device
    decode_mem = buffered * feats.batch_size * views * frames * size * size * 3
    train_mem = (8 * 4 + 2) * params.align.optim.batch_size * int(np.prod(m_shape)) * 2
    lines += ["", "Memory bound (batches in flight, independent of the number of clips):",
              f"- features: {_size(decode_mem)} of decoded frames ({rt.workers} workers x prefetch 4, batch "
              f"{feats.batch_size} clips x {views} views x {frames}x{size}x{size}x3) plus the backbone",
              f"- align/finetune: {_size(train_mem)} of m batches at most (8 loader workers x prefetch 4, batch "
              f"{params.align.optim.batch_size}); the index of clips grows by bytes per clip, the data does not"]
    world = rt.world
    lines += ["", "Time per stage for the pretraining corpus (" + f"{pretrain_clips:,} clips):"]
    if world > 1:
        lines.append(f"runtime: {world} processes ({rt.nnodes} node{'s' if rt.nnodes > 1 else ''} x {rt.nproc_per_node}); "
                     "every stage that runs a network splits its work over them (caption only with an hf VLM). "
                     "The last column divides the one-GPU time by the number of GPUs: ideal "
                     "scaling, not measured beyond one GPU (benchmarks/world_size.py measures it on yours)")
    if cpu_rates:
        gpus = f" | {world} x H100 (ideal scaling)" if world > 1 else ""
        lines.append(f"| stage | this machine's CPU (measured rate) | one H100 (measured, ViT-B){gpus} |")
        lines.append("|---|---|---|" + ("---|" if world > 1 else ""))
        for stage in ("download", "tile", "caption", "embed", "features", "align"):
            cpu = cpu_rates.get(stage)
            same_backbone = stage not in ("features", "align") or backbone_kind == "tiny"
            cpu_text = f"{_duration(pretrain_clips / cpu)} at {cpu:g} clips/s" if cpu and same_backbone else \
                "not measured for this backbone: run benchmarks/gpu_features.py --device cpu"
            g = gpu_rates.get(stage)
            gpu_text = f"{_duration(pretrain_clips / g)} at {g:g} clips/s" + (" per epoch" if stage == "align" else "") \
                if g and stage in ("features", "align") else "-"
            split = stage in ("features", "align") and g
            many = (f" | {_duration(pretrain_clips / (g * world))}" if split else " | -") if world > 1 else ""
            lines.append(f"| {stage}{' (one epoch)' if stage == 'align' else ''} | {cpu_text} | {gpu_text}{many} |")
        lines.append("CPU rates: benchmarks/results/scale.jsonl (SynthAct, tiny backbone, 2 cores); captions with the "
                     "builtin VLM (a real VLM's rate is its own: `python stages/caption.py DATASET --dry-run` counts the calls).")
    else:
        lines.append("no measured rates: run `python benchmarks/scale.py` on this machine")
    return "\n".join(lines)
