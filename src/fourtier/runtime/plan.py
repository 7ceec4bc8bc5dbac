"""`fourtier plan`: the bill before the run. For the configured datasets, backbone, K and VLM: clips, disk per
stage output, the files DVC tracks per output (from the shard settings), the disk the outputs take under the DVC
cache's link type (probed here, as DVC picks it), the memory bound of the streaming stages, the captioning bill
(requests, tokens, price) and time per stage from measured rates at the configured world size. It warns when an
output would be more than `MANY_FILES` files (naming the param that shards it) and when the outputs would not fit
on the free disk. Nothing is downloaded, no tile is read and no VLM is asked; an API key is not needed.

Rates come from benchmarks/results/scale.jsonl (written by benchmarks/scale.py on the machine that ran it; run
it on yours for your figures), benchmarks/results/gpu_h100.jsonl (a ViT-B backbone on one H100) and, for more
than one process, benchmarks/results/world_size.jsonl (benchmarks/world_size.py; ideal scaling where it has no
row for the configured world size).
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fourtier import paths
from fourtier.config.base import PROMPT_IDS, resolve_preset
from fourtier.data.shards import rows_per_shard

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

# Files per output above which DVC's status, commit and push slow down (a hash and a cache file per file)
MANY_FILES = 100_000
# Files beside the videos, tiles or m in each output (data/contract.py, tiling.tile_dataset, text.embed_captions,
# features.compute_features): annotations.csv, classes.txt, manifest.json (+ attributes.csv for SynthAct); index.csv,
# summary.json; tokens/mask/pooled .npy, videos.txt, meta.json; videos/labels/splits/rows .txt, meta.json (+ m.json)
RAW_EXTRA_FILES, TILE_EXTRA_FILES, EMBED_FILES, FEATURE_INDEX_FILES = 3, 2, 5, 5
# Panel aspect (width / height) of the tiles sent to the VLM, per dataset type: the widest SynthAct size
# (data/synthact.SIZES, an upper bound), 4:3 for UCF-101/HMDB51, 16:9 for the rest
TILE_ASPECT = {"synthact": 160 / 96, "ucf101": 4 / 3, "hmdb51": 4 / 3}
WIDE_ASPECT = 16 / 9
# where an openai preset without base_url would send requests; plan sends none, so a placeholder lets the backend
# (and its token estimate) be built without the API key
PLAN_BASE_URL = "http://fourtier-plan.invalid/v1"


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
    preset = resolve_preset(params.backbone, params.backbones)
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


# ---------------------------------------------------------------------------------------------
# files DVC tracks per output


@dataclass(frozen=True)
class OutputFiles:
    path: str  # the output, as dvc.yaml names it
    files: int
    layout: str  # how the count follows from the clips and the settings
    fix: str  # what to change when `files` is too many ("" where the count does not grow with the clips)


def sharded_files(items: int, shard_above: int, shard_size: int) -> int:
    """Files store.ItemWriter writes for `items` items: one each, or zip shards of `shard_size` above `shard_above`."""
    return math.ceil(items / shard_size) if items > shard_above else items


def _items_output(path: str, clips: int, what: str, section: str, above: int, size: int, extra: int) -> OutputFiles:
    files = sharded_files(clips, above, size)
    if clips > above:
        layout = f"{files:,} zip shard{'s' * (files != 1)} of {size:,} {what} (above {section}.shard_above, {above:,}) + {extra}"
        fix = f"raise {section}.shard_size (now {size:,}): fewer, larger shards"
    else:
        layout = f"one file per {what[:-1]} (up to {section}.shard_above, {above:,}) + {extra}"
        fix = f"lower {section}.shard_above (now {above:,}) below {clips:,}, so the {what} go into zip shards"
    return OutputFiles(path, files + extra, layout, fix)


def output_files(params, name: str, clips: int, stage1: bool, view_bytes: int) -> list[OutputFiles]:
    """The files DVC will track in each output of dataset `name`, from its clip count and the shard settings."""
    dl, tile, feats = params.download, params.tile, params.features
    raw_extra = RAW_EXTRA_FILES + (params.datasets[name].kind == "synthact")  # + attributes.csv
    outs = [_items_output(paths.raw(name).as_posix(), clips, "videos", "download", dl.shard_above, dl.shard_size,
                          raw_extra)]
    if stage1:
        outs += [_items_output(paths.tiles(name).as_posix(), clips, "tiles", "tile", tile.shard_above, tile.shard_size,
                               TILE_EXTRA_FILES),
                 OutputFiles(paths.captions(name).as_posix(), 2, "captions.jsonl + metrics.json", ""),
                 OutputFiles(paths.embeddings(name).as_posix(), EMBED_FILES, "3 .npy + 2 index files, any size", "")]
    if feats.cache:
        per_shard = rows_per_shard(view_bytes, feats.shard_mb)  # rows are views, as features.compute_features
        shards = max(1, math.ceil(clips * feats.temporal_views * feats.spatial_views / per_shard))
        outs.append(OutputFiles(paths.features(name).as_posix(), shards + FEATURE_INDEX_FILES + 1,
                                f"{shards:,} .npy shard{'s' * (shards != 1)} of at most features.shard_mb ({feats.shard_mb:,} MB) + "
                                f"{FEATURE_INDEX_FILES + 1}",
                                f"raise features.shard_mb (now {feats.shard_mb:,})"))
    else:
        outs.append(OutputFiles(paths.features(name).as_posix(), FEATURE_INDEX_FILES,
                                "the index only (features.cache: false)", ""))
    return outs


# ---------------------------------------------------------------------------------------------
# the DVC cache: which link type DVC will use here, so how many times the outputs' bytes are on disk


@dataclass(frozen=True)
class CacheLink:
    configured: tuple[str, ...]  # cache.type as DVC resolves it (its default, reflink,copy, where none is set)
    works: tuple[str, ...]  # of reflink, hardlink and symlink: those that work from the cache to the workspace
    used: str  # the first configured type that works, as DVC picks it ("copy" always works); "" when none does;
    # copy where reflink is first and does not work (DVC then leaves the outputs of a run as copies)
    cache_dir: Path
    same_filesystem: bool  # the cache and the workspace's data/ share a disk (and its free space)

    @property
    def copies(self) -> int:
        """Times the outputs' bytes are on disk: twice with copy (workspace and cache), else once."""
        return 2 if self.used == "copy" else 1


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def dvc_cache_link(root: Path) -> CacheLink | None:
    """The link type DVC will use between its cache and the workspace at `root`, or None if `root` is not a DVC
    repository. The configured list comes from DVC itself (every config level, its default where none is set);
    each link type is probed with DVC's own test (a tiny file in the cache folder, linked into data/)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc_objects.fs.generic import test_links
    from dvc_objects.fs.local import LocalFileSystem

    try:
        repo = Repo(os.fspath(root))
    except NotDvcRepoError:
        return None
    try:
        odb = repo.cache.local
        configured, cache_dir = tuple(odb.cache_types), Path(odb.path)
    finally:
        repo.close()
    # probe in the nearest existing folders: a fresh clone has no cache (nor data/) yet, and plan creates none
    cache_probe, workspace = _existing(cache_dir), _existing(Path(root) / "data")
    fs = LocalFileSystem()
    works = tuple(test_links(["reflink", "hardlink", "symlink"], fs, str(cache_probe), fs, str(workspace / "probe")))
    used = next((t for t in configured if t == "copy" or t in works), "")
    if configured[:1] == ("reflink",) and "reflink" not in works and "copy" in configured:
        # DVC cannot tell a reflink from a copy, so after a stage runs it leaves its outputs as copies when reflink
        # is first and does not work (DVC issue 10549): in effect copy, whatever follows in the list
        used = "copy"
    return CacheLink(configured, works, used, cache_dir, os.stat(cache_probe).st_dev == os.stat(workspace).st_dev)


def _disk_lines(link: CacheLink | None, root: Path, total: int, largest: int, m_total: int) -> list[str]:
    """What the outputs take on disk under the cache's link type, and a warning where that does not fit."""
    free = shutil.disk_usage(root).free
    fixes = ["free space", "point data/ and the DVC cache at a larger disk"]
    if m_total:
        fixes.append(f"set features.cache: false ({_size(m_total)} of m computed on the fly instead)")
    if link is None:
        lines = [f"DVC cache: {Path(root).absolute()} is not a DVC repository: outputs counted once, without a cache",
                 f"outputs in all: {_size(total)}; free disk here: {_size(free)}"]
        needs = [("the outputs", total, free)]
    else:
        where = link.cache_dir.relative_to(Path(root).absolute()) if link.cache_dir.is_relative_to(
            Path(root).absolute()) else link.cache_dir
        held = {"copy": "twice: in the workspace and in the cache", "": "-"}.get(
            link.used, "once: the workspace links to the cache")
        lines = [f"DVC cache ({where}): cache.type {','.join(link.configured)}; works here: "
                 f"{', '.join(link.works + ('copy',))} -> DVC will use {link.used or 'none'}: outputs on "
                 f"disk {held}"]
        if not link.used:
            lines.append(f"WARNING: none of cache.type {','.join(link.configured)} works between {where} and the "
                         "workspace: DVC cannot check outputs out; add copy (`dvc config cache.type "
                         "hardlink,symlink,copy`)")
        if link.used == "copy" and {"hardlink", "symlink"} & set(link.works):
            fixes.append("let DVC link instead of copy: `dvc config cache.type hardlink,symlink,copy`")
        if link.same_filesystem:
            need = total * link.copies
            lines.append(f"outputs in all: {_size(total)}, on disk with the cache: {_size(need)}; free disk here: "
                         f"{_size(free)}")
            needs = [(f"the outputs ({_size(total)} x {link.copies} with cache.type {link.used})" if link.copies > 1
                      else f"the outputs ({_size(total)})", need, free)]
        else:  # the cache is on another disk: each holds what it holds
            cache_free = shutil.disk_usage(_existing(link.cache_dir)).free
            # with symlink the workspace holds only the output being written, before DVC moves it to the cache
            here = largest if link.used == "symlink" else total
            lines.append(f"outputs in all: {_size(total)}; the cache is on another disk: {_size(total)} there "
                         f"({_size(cache_free)} free), {_size(here)} here ({_size(free)} free)")
            needs = [(f"the outputs ({_size(here)} in the workspace)", here, free),
                     (f"the DVC cache ({_size(total)})", total, cache_free)]
    for what, need, room in needs:
        if need > room:
            lines.append(f"WARNING: {what} do not fit on the free disk ({_size(room)}): " + ", ".join(fixes))
    return lines


# ---------------------------------------------------------------------------------------------
# the captioning bill


def _blank_tile(k: int, height: int, aspect: float) -> bytes:
    """A JPEG of a tile's size (K panels of `height` px at `aspect`), for the backend's own token estimate."""
    from PIL import Image

    from fourtier.video.tiling import panel_width

    buf = io.BytesIO()
    Image.new("RGB", (k * panel_width((round(aspect * 1000), 1000), height), height)).save(buf, format="JPEG")
    return buf.getvalue()


def _vlm_preset(params) -> dict:
    """The preset of the configured VLM, as vlm.make_backend resolves the selector."""
    return resolve_preset(params.vlm, params.vlms)


def caption_bill(params, tiles: dict[str, int]) -> list[str]:
    """Requests, tokens and price of captioning `tiles` (tiles per pretraining dataset) with the configured VLM:
    upper bounds (every tile asked, every answer max_new_tokens long, no answer cached). An openai preset's
    tokens and price come from the backend's own estimate over a tile of the configured size."""
    from fourtier.caption.backend import Request, VLMError, decode_tile, make_backend

    name, preset = params.vlm, _vlm_preset(params)
    kind, joint = preset.get("type"), preset.get("joint", False) is True
    per_tile = 1 if joint else len(PROMPT_IDS)
    max_out = params.caption.max_new_tokens * (len(PROMPT_IDS) if joint else 1)  # a joint reply has four answers
    total = sum(tiles.values())
    asked = f"{'one joint request' if joint else f'{per_tile} prompts'} per tile"
    lines = [f"Captioning with vlm {name} ({kind}{', joint' if joint else ''}): {total:,} tiles, {asked}, "
             f"{total * per_tile:,} requests"]
    if kind != "openai":
        what = ("the builtin describer runs on this machine: no tokens" if kind == "builtin" else
                f"runs on your own hardware, up to {max_out:,} output tokens per request ({total * per_tile * max_out:,} "
                "in all)")
        return lines + [f"- {what}; no per-token price"]
    generation = {"max_new_tokens": params.caption.max_new_tokens, "temperature": params.caption.temperature,
                  "device": params.runtime.device}
    try:
        backend = make_backend(name, {name: {**preset, "base_url": preset.get("base_url") or PLAN_BASE_URL}},
                               generation)
    except VLMError as exc:
        return lines + [f"- no estimate: {exc}"]
    from fourtier.caption.runner import joint_requests

    lines += ["| dataset | tile (px) | requests | input tokens | output tokens (at most) | price (USD) |",
              "|---|---|---|---|---|---|"]
    sum_in = sum_out = 0
    for dataset, n in tiles.items():
        aspect = TILE_ASPECT.get(params.datasets[dataset].kind, WIDE_ASPECT)
        jpeg = _blank_tile(params.K, params.tile.height, aspect)
        one_tile = [Request(video_id="plan", prompt_id=pid, prompt=params.caption.prompts[pid], tile_jpeg=jpeg,
                            K=params.K, key=pid) for pid in PROMPT_IDS]
        estimate = backend.estimate(joint_requests(one_tile)[0] if joint else one_tile)  # per tile
        tokens_in, tokens_out = estimate["input_tokens"] * n, estimate["output_tokens"] * n
        sum_in, sum_out = sum_in + tokens_in, sum_out + tokens_out
        h, w, _ = decode_tile(jpeg).shape
        lines.append(f"| {dataset} | {w} x {h} | {n * per_tile:,} | {tokens_in:,} | {tokens_out:,} | "
                     f"{backend.cost(tokens_in, tokens_out):,.2f} |")
    price = (f"${backend.cost(sum_in, sum_out):,.2f} in all at ${backend.price_in:g} in / ${backend.price_out:g} out "
             f"per million tokens (vlms.{name})" if backend.price_in or backend.price_out else
             f"no per-token price in vlms.{name} (price_input_per_mtok, price_output_per_mtok)")
    return lines + [f"- {price}; image tokens at detail {backend.detail}; upper bounds: answers already in the "
                    "answer cache are not asked again (`python stages/caption.py DATASET --dry-run` counts them)"]


# ---------------------------------------------------------------------------------------------
# time per stage at the configured world size


def _world_speedups(path: Path, device: str, world: int) -> dict[str, float]:
    """Measured speed-up per stage of `world` processes over one on `device` (benchmarks/world_size.py)."""
    if world == 1 or not path.exists():
        return {}
    rate: dict[tuple[str, int], float] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if r.get("device") == device and r.get("nproc") in (1, world):
            rate[(r["stage"], r["nproc"])] = r["per_s"]  # the latest row of each wins
    return {stage: rate[(stage, world)] / rate[(stage, 1)] for stage, n in rate if n == 1 and (stage, world) in rate}


def plan(params, root: Path = Path(".")) -> str:
    feats, rt = params.features, params.runtime
    m_shape, (frames, size), backbone_kind = view_shape(params)
    views = feats.temporal_views * feats.spatial_views
    view_bytes = int(np.prod(m_shape)) * 2
    m_clip = views * view_bytes
    embed_clip = 4 * params.embed.max_tokens * (384 + 1) * 2 + 4 * 384 * 2
    results = root / "benchmarks" / "results"
    cpu_rates = _rates(results / "scale.jsonl")
    gpu = [json.loads(x) for x in (results / "gpu_h100.jsonl").read_text().splitlines()] \
        if (results / "gpu_h100.jsonl").exists() else []
    gpu_rates: dict[str, float] = {}  # the best measured rate of the committed code per stage
    for r in gpu:
        stage = {"features": "features", "align epoch (cached m)": "align"}.get(r["stage"])
        if stage and r["device"] == "cuda" and "shared memory" in r.get("code", ""):
            gpu_rates[stage] = max(gpu_rates.get(stage, 0.0), r["clips_per_s"])
    lines = [f"backbone {params.backbone} ({backbone_kind}): m per view {m_shape} float16, {views} views per clip "
             f"= {_size(m_clip)} per clip; K={params.K}; device {rt.device}", ""]
    lines.append("| dataset | role | clips | raw | tiles | captions | embeddings | m (features) |")
    lines.append("|---|---|---|---|---|---|---|---|")
    total_m = total_out = largest = pretrain_clips = target_clips = 0
    tiles: dict[str, int] = {}
    files: list[OutputFiles] = []
    for role, names in (("pretrain", params.pretrain), ("target", params.targets)):
        for name in names:
            n, how = _clips(params, name)
            spec = params.datasets[name]
            raw = RAW_BYTES["synthact" if spec.kind == "synthact" else "public"]
            m = n * m_clip if feats.cache else 0
            stage1 = role == "pretrain"
            sizes = [n * raw, m] + ([n * TILE_BYTES, n * CAPTION_BYTES, n * embed_clip] if stage1 else [])
            total_m, total_out, largest = total_m + m, total_out + sum(sizes), max(largest, *sizes)
            if stage1:
                pretrain_clips += n
                tiles[name] = n
            else:
                target_clips += n
            files += output_files(params, name, n, stage1, view_bytes)
            lines.append(f"| {name} | {role} | {n:,} ({how}) | {_size(n * raw)} | "
                         f"{_size(n * TILE_BYTES) if stage1 else '-'} | {_size(n * CAPTION_BYTES) if stage1 else '-'} | "
                         f"{_size(n * embed_clip) if stage1 else '-'} | {_size(m) if feats.cache else 'not cached'} |")
    lines += ["", f"m cache in all: {_size(total_m)}"]
    lines += _disk_lines(dvc_cache_link(root), root, total_out, largest, total_m)

    lines += ["", f"Files DVC tracks per output (more than {MANY_FILES:,} in one slow down `dvc status` and `dvc push`):",
              "| output | files | layout |", "|---|---|---|"]
    lines += [f"| {f.path} | {f.files:,} | {f.layout} |" for f in files]
    lines += [f"WARNING: {f.path} would be {f.files:,} files, over {MANY_FILES:,}: {f.fix}"
              for f in files if f.files > MANY_FILES and f.fix]

    buffered = rt.workers * 4 + 2  # batches in flight: prefetch 4 per loader worker, one decoding, one on device
    decode_mem = buffered * feats.batch_size * views * frames * size * size * 3
    train_mem = (8 * 4 + 2) * params.align.optim.batch_size * int(np.prod(m_shape)) * 2
    lines += ["", "Memory bound (batches in flight, independent of the number of clips):",
              f"- features: {_size(decode_mem)} of decoded frames ({rt.workers} workers x prefetch 4, batch "
              f"{feats.batch_size} clips x {views} views x {frames}x{size}x{size}x3) plus the backbone",
              f"- align/finetune: {_size(train_mem)} of m batches at most (8 loader workers x prefetch 4, batch "
              f"{params.align.optim.batch_size}); the index of clips grows by bytes per clip, the data does not"]

    lines += [""] + caption_bill(params, tiles)

    world = rt.world
    lines += ["", "Time per stage for the pretraining corpus (" + f"{pretrain_clips:,} clips)"
              + (f" and, for features, the targets ({target_clips:,} clips):" if target_clips else ":")]
    gpu_speedups = _world_speedups(results / "world_size.jsonl", "cuda", world)
    if world > 1:
        lines.append(f"runtime: {world} processes ({rt.nnodes} node{'s' if rt.nnodes > 1 else ''} x {rt.nproc_per_node}); "
                     "every stage that runs a network splits its work over them (caption only with an hf VLM). "
                     "The last column divides the one-GPU time by the number of GPUs: ideal "
                     "scaling, not measured beyond one GPU (benchmarks/world_size.py measures it on yours)"
                     if not gpu_speedups else
                     "The last column uses the speed-up benchmarks/results/world_size.jsonl measured with "
                     f"{world} GPUs where it has one (marked measured), else ideal scaling")
    if cpu_rates:
        gpus = f" | {world} x H100 ({'ideal scaling' if not gpu_speedups else 'measured or ideal'})" if world > 1 else ""
        lines.append(f"| stage | this machine's CPU (measured rate) | one H100 (measured, ViT-B){gpus} |")
        lines.append("|---|---|---|" + ("---|" if world > 1 else ""))
        rows = [(s, s, pretrain_clips) for s in ("download", "tile", "caption", "embed", "features", "align")]
        if target_clips:
            rows.insert(5, ("features (targets)", "features", target_clips))
        for label, stage, clips in rows:
            cpu = cpu_rates.get(stage)
            same_backbone = stage not in ("features", "align") or backbone_kind == "tiny"
            cpu_text = f"{_duration(clips / cpu)} at {cpu:g} clips/s" if cpu and same_backbone else \
                "not measured for this backbone: run benchmarks/gpu_features.py --device cpu"
            g = gpu_rates.get(stage)
            gpu_text = f"{_duration(clips / g)} at {g:g} clips/s" + (" per epoch" if stage == "align" else "") \
                if g and stage in ("features", "align") else "-"
            speedup = gpu_speedups.get(stage)
            split = stage in ("features", "align") and g
            many = ((f" | {_duration(clips / (g * speedup))} (measured)" if speedup else
                     f" | {_duration(clips / (g * world))}") if split else " | -") if world > 1 else ""
            lines.append(f"| {label}{' (one epoch)' if stage == 'align' else ''} | {cpu_text} | {gpu_text}{many} |")
        lines.append("CPU rates: benchmarks/results/scale.jsonl (SynthAct, tiny backbone, 2 cores, one process); captions "
                     "with the builtin VLM (a real VLM's rate is its own: `python stages/caption.py DATASET --dry-run` "
                     "counts the calls).")
        cpu_speedups = _world_speedups(results / "world_size.jsonl", "cpu", world)
        if cpu_speedups:  # on the CPU the processes share the cores: what that measured
            lines.append(f"On the CPU the {world} processes share the cores: benchmarks/results/world_size.jsonl "
                         "measured " + ", ".join(f"{s} x{f:.2f}" for s, f in sorted(cpu_speedups.items()))
                         + " against one process.")
    else:
        lines.append("no measured rates: run `python benchmarks/scale.py` on this machine")
    return "\n".join(lines)
