"""Typed loading and validation of params.yaml.

Every stage calls `load_params()` first, so a bad value fails before any work starts, with a message
that names the key, the bad value and what is allowed. Every section is a typed dataclass; a key that no
section knows (a typo) is an error that names the closest valid key. Presets (vlms, backbones,
text_encoders) take backend-specific keys and are checked by the backend that reads them.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from fourtier.errors import ParamsError

PROMPT_IDS = ("A", "B", "C", "D")
ARMS = ("baseline", "ftp", "random", "shuffled")  # README, "Arms": the baseline, FTP and its two controls
PROCESSORS = ("attention", "paper")  # README, "The model and its two training stages"
OBJECTIVES = ("pooled", "tokens")
DATASET_TYPES = ("synthact", "folder", "ucf101", "hmdb51", "kinetics", "k710", "ssv2")
SYNTHACT_VARIANTS = ("pretrain", "scenes", "motion")
# kinds whose download reads files outside the workspace (a `root` folder), which DVC sees only when they are
# listed under `watch:` (README, "Your own videos"); fourtier.data.sources fingerprints each of them
OUTSIDE_KINDS = ("folder", "ssv2")
_PUBLIC_KEYS = ("type", "split", "short_side", "cache_dir", "archive_url", "splits_url", "archive_sha256", "archive_size")
_KINETICS_KEYS = ("type", "version", "splits", "parts", "short_side", "cache_dir", "base_url")
DATASET_KEYS = {
    "synthact": ("type", "variant", "seed", "clips", "val_fraction", "train_per_class", "val_per_class", "seconds"),
    "folder": ("type", "root", "csv", "val_fraction", "short_side", "seed"),
    "ucf101": _PUBLIC_KEYS, "hmdb51": _PUBLIC_KEYS,
    "kinetics": _KINETICS_KEYS, "k710": tuple(k for k in _KINETICS_KEYS if k != "version"),
    "ssv2": ("type", "root", "short_side"),
}
TOP_LEVEL_KEYS = ("vlm", "K", "backbone", "text_encoder", "prompts", "pretrain", "targets", "watch", "datasets", "vlms",
                  "backbones", "text_encoders", "download", "tile", "caption", "embed", "backbone_train", "features", "align",
                  "finetune", "runtime")


@dataclass(frozen=True)
class SynthActSpec:
    kind: ClassVar[str] = "synthact"
    name: str
    variant: str
    seed: int
    clips: int  # pretrain only: total clips
    val_fraction: float  # pretrain only
    train_per_class: int  # targets only
    val_per_class: int  # targets only
    seconds: tuple[float, float] = (2.0, 4.0)  # clip duration, drawn uniformly in this range


@dataclass(frozen=True)
class FolderSpec:
    kind: ClassVar[str] = "folder"
    name: str
    root: Path
    csv: Path
    val_fraction: float  # used for rows whose CSV has no split
    short_side: int  # 0 = keep the videos as they are (still validated)
    seed: int


@dataclass(frozen=True)
class PublicSpec:
    """UCF-101 or HMDB51 from the official archives (fourtier.data.public)."""
    kind: str
    name: str
    split: int  # the official split, 1-3
    short_side: int  # normalised short side (0 = keep as is)
    cache_dir: Path  # archives and extracted videos, outside the workspace
    archive_url: str  # "" = the official location
    splits_url: str
    archive_sha256: str  # "" = not pinned (the downloaded file's sha256 is recorded in the manifest)
    archive_size: int  # 0 = not pinned


@dataclass(frozen=True)
class KineticsSpec:
    """Kinetics-400/600/700 (kind kinetics) or K710 (kind k710) from the CVDF mirror (fourtier.data.kinetics)."""
    kind: str
    name: str
    version: str  # 400, 600 or 700 (700 = Kinetics-700-2020); unused for k710
    splits: tuple[str, ...]
    parts: int  # 0 = every archive part; N = the first N parts of each split (a subset)
    short_side: int
    cache_dir: Path
    base_url: str  # "" = the CVDF mirror


@dataclass(frozen=True)
class SSv2Spec:
    """Something-Something V2 from a local copy (fourtier.data.ssv2)."""
    kind: ClassVar[str] = "ssv2"
    name: str
    root: Path
    short_side: int


@dataclass(frozen=True)
class DownloadParams:
    shard_above: int  # more clips than this: the videos go into zip shards (one DVC file per shard, not per clip)
    shard_size: int  # clips per shard
    parallel: int  # archives (e.g. Kinetics parts) fetched and unpacked at once: speed only


@dataclass(frozen=True)
class TileParams:
    height: int
    jpeg_quality: int
    shard_above: int
    shard_size: int


@dataclass(frozen=True)
class CaptionParams:
    prompts: dict[str, str]  # id -> text, always all four
    max_new_tokens: int
    temperature: float
    max_failures: float  # fraction of requests allowed to fail after retries


@dataclass(frozen=True)
class EmbedParams:
    batch_size: int
    max_tokens: int  # token-level embeddings kept per answer (the pooled vector uses the whole answer)
    max_length: int  # tokens the encoder reads per answer


@dataclass(frozen=True)
class FeaturesParams:
    temporal_views: int  # clips per video (sparse sampling)
    spatial_views: int  # crops per clip
    batch_size: int  # clips per backbone forward (speed only)
    cache: bool  # false: m is computed from the videos whenever a stage needs it, nothing stored
    shard_mb: int  # m is stored in .npy shards of at most this size


@dataclass(frozen=True)
class RuntimeParams:
    workers: int  # processes for per-video work (decoding, tiling, SynthAct)
    device: str  # auto | cpu | cuda (see fourtier.runtime)
    loader_workers: int | str  # training/evaluation data-loading processes, or auto
    # several processes (fourtier.launch): ranks per node and nodes, how they are started and find each other
    nproc_per_node: int = 1
    nnodes: int = 1
    launcher: str = "torchrun"  # torchrun | srun (SLURM: one torchrun per node of the allocation)
    rdzv_endpoint: str = ""  # host:port of the rendezvous; "" = this host (standalone on one node)
    stage2_parallel: str = "runs"  # runs: stage-2 runs spread over the ranks | ddp: every run over all ranks
    timeout_s: int = 1800  # a collective that waits longer is an error naming the rank
    checkpoint_dir: str = ""  # resumable state; "" = the cache dir; several nodes: a directory all of them share

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warm-up then cosine decay (paper Tables A2/A3): one per training section."""
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_epochs: float


@dataclass(frozen=True)
class BackboneTrainParams:
    corpus: str  # the dataset (under datasets:) the `tiny` backbone is pretrained on; generated inside that stage
    optim: OptimSettings
    temporal_views: int  # augmentation: a random one of these per sample
    flips: bool  # augmentation: horizontal flips
    time_reversal: bool  # augmentation: clips played backwards
    seed: int


@dataclass(frozen=True)
class AlignParams:
    optim: OptimSettings
    seed: int
    processor: str  # attention (ours) | paper (mean pooling + a linear projection, the paper's Table 1)
    objective: str  # pooled (InfoNCE on pooled vectors) | tokens (InfoNCE on a token-wise score)


@dataclass(frozen=True)
class FinetuneParams:
    optim: OptimSettings
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    label_smoothing: float
    mixup_alpha: float
    mixup_prob: float
    shots: int  # labelled training clips per class; 0 = all (few-shot: fourtier.fewshot)
    shots_seed: int  # which clips: the same for every arm and seed


@dataclass(frozen=True)
class Params:
    vlm: str
    K: int
    backbone: str
    text_encoder: str
    prompts: tuple[str, ...]
    pretrain: tuple[str, ...]
    targets: tuple[str, ...]
    watch: tuple[str, ...]
    datasets: dict[str, SynthActSpec | FolderSpec]
    vlms: dict[str, dict]
    backbones: dict[str, dict]
    text_encoders: dict[str, dict]
    download: DownloadParams
    tile: TileParams
    caption: CaptionParams
    embed: EmbedParams
    features: FeaturesParams
    backbone_train: BackboneTrainParams
    align: AlignParams
    finetune: FinetuneParams
    runtime: RuntimeParams
    raw: dict[str, Any]

    @property
    def workers(self) -> int:
        return self.runtime.workers

    def dataset(self, name: str) -> SynthActSpec | FolderSpec:
        if name not in self.datasets:
            raise ParamsError(f"dataset {name!r} is not defined under 'datasets:' in params.yaml "
                              f"(defined: {', '.join(sorted(self.datasets))})")
        return self.datasets[name]


def _get(mapping: dict, key: str, where: str, kind: type | tuple, default: Any = ...) -> Any:
    """Read mapping[key], checking its type; `where` is the dotted path for the message."""
    dotted = f"{where}.{key}" if where else key
    if key not in mapping:
        if default is ...:
            raise ParamsError(f"params.yaml: missing key '{dotted}'")
        return default
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is a subclass of int; a YAML 'yes' where a number belongs is a mistake
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ParamsError(f"params.yaml: '{dotted}' must be {names}, got {value!r} ({type(value).__name__})")
    return value


def _known_keys(mapping: dict, allowed, where: str) -> None:
    """A key no section reads is a typo that would silently keep the default: name it and the closest key."""
    for key in mapping:
        if key not in allowed:
            dotted = f"{where}.{key}" if where else str(key)
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (valid: {', '.join(allowed)})"
            raise ParamsError(f"params.yaml: unknown key '{dotted}'{hint}")


def _number(mapping: dict, key: str, where: str, low: float, high: float | None = None, *, low_open: bool = False,
            default: Any = ...) -> float:
    """A real number in [low, high] ((low, high] with low_open); YAML's 1e-3 without a dot is a string: say so."""
    value = mapping.get(key, default)
    if isinstance(value, str):
        try:
            float(value)
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
        except ValueError:
            hint = ""
        raise ParamsError(f"params.yaml: '{where}.{key}' must be a number, got {value!r}{hint}")
    value = float(_get(mapping, key, where, (int, float), default))
    if value < low or (low_open and value == low) or (high is not None and value > high) or value != value:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ParamsError(f"params.yaml: '{where}.{key}' must be {bound}, got {value}")
    return value


def _endpoint(value: str) -> str:
    """host:port of a torch rendezvous, or "" for this host."""
    host, _, port = value.rpartition(":")
    if value and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise ParamsError(f"params.yaml: 'runtime.rdzv_endpoint' must be host:port (e.g. node001:29500), "
                          f"got {value!r}")
    return value


def _optim(section: dict, where: str) -> OptimSettings:
    betas = _get(section, "betas", where, list)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        raise ParamsError(f"params.yaml: '{where}.betas' must be two numbers in [0, 1), got {betas!r}")
    return OptimSettings(epochs=_int_at_least(section, "epochs", where, 1),
                         batch_size=_int_at_least(section, "batch_size", where, 1),
                         lr=_number(section, "lr", where, 0.0, low_open=True),
                         weight_decay=_number(section, "weight_decay", where, 0.0),
                         betas=(float(betas[0]), float(betas[1])),
                         warmup_epochs=_number(section, "warmup_epochs", where, 0.0))


OPTIM_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "betas", "warmup_epochs")


def _section(raw: dict, key: str, allowed) -> dict:
    section = _get(raw, key, "", dict)
    _known_keys(section, allowed, key)
    return section


def _seed_list(section: dict, where: str) -> tuple[int, ...]:
    seeds = _get(section, "seeds", where, list)
    if not seeds:
        raise ParamsError(f"params.yaml: '{where}.seeds' is empty; give at least one seed, e.g. [0]")
    for i, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ParamsError(f"params.yaml: '{where}.seeds[{i}]' must be a whole number >= 0, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"params.yaml: '{where}.seeds' lists a seed twice: {seeds}")
    return tuple(seeds)


def _arms(section: dict, where: str) -> tuple[str, ...]:
    arms = _get(section, "arms", where, list)
    if not arms:
        raise ParamsError(f"params.yaml: '{where}.arms' is empty, so nothing would be trained; "
                          f"name at least one of: {', '.join(ARMS)}")
    for i, arm in enumerate(arms):
        _choice(arm, ARMS, f"{where}.arms[{i}]")
    if len(set(arms)) != len(arms):
        raise ParamsError(f"params.yaml: '{where}.arms' lists an arm twice: {arms}")
    return tuple(arms)


def _choice(value: str, allowed, dotted: str, hint: str = "") -> str:
    if value not in allowed:
        raise ParamsError(f"params.yaml: '{dotted}' is {value!r}, which is not one of: "
                          f"{', '.join(map(str, allowed))}{hint}")
    return value


def _int_at_least(mapping: dict, key: str, where: str, low: int, default: Any = ...) -> int:
    value = _get(mapping, key, where, int, default)
    if value < low:
        raise ParamsError(f"params.yaml: '{where}.{key}' must be >= {low}, got {value}")
    return value


def _fraction(mapping: dict, key: str, where: str, default: Any = ...) -> float:
    value = float(_get(mapping, key, where, (int, float), default))
    if not 0.0 <= value < 1.0:
        raise ParamsError(f"params.yaml: '{where}.{key}' must be in [0, 1), got {value}")
    return value


def _presets(raw: dict, key: str) -> dict[str, dict]:
    presets = _get(raw, key, "", dict)
    if not presets:
        raise ParamsError(f"params.yaml: '{key}' must define at least one preset")
    for name, preset in presets.items():
        if not isinstance(preset, dict):
            raise ParamsError(f"params.yaml: preset '{key}.{name}' must be a mapping, got {preset!r}")
    return presets


def resolve_preset(name: str, presets: dict[str, dict]) -> dict | None:
    """What a model selector (vlm, backbone, text_encoder) names: a preset of its section, hf:<model id> (any
    hub model) or the path of a local model folder (a transformers save_pretrained directory), the last two as
    {"type": "hf", "model": ...}; None when it is none of these. The one place this meaning is written."""
    if name in presets:
        return presets[name]
    if name.startswith("hf:") and len(name) > 3:
        return {"type": "hf", "model": name[3:]}
    if Path(name).is_dir():
        return {"type": "hf", "model": name}
    return None


def _selector(raw: dict, key: str, presets: dict[str, dict], presets_key: str) -> str:
    value = _get(raw, key, "", str)
    if resolve_preset(value, presets) is not None:
        return value
    return _choice(value, sorted(presets), key,
                   f" (presets under '{presets_key}:', hf:<model id>, or the path of a local model folder)")


def _seconds(spec: dict, where: str) -> tuple[float, float]:
    """A SynthAct clip duration range [low, high] in seconds (each clip draws its own)."""
    value = _get(spec, "seconds", where, list, [2.0, 4.0])
    if (len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not 0 < value[0] <= value[1]):
        raise ParamsError(f"params.yaml: '{where}.seconds' must be [low, high] with 0 < low <= high (seconds), "
                          f"got {value!r}")
    return float(value[0]), float(value[1])


def _dataset_spec(name: str, spec: Any) -> SynthActSpec | FolderSpec | PublicSpec:
    where = f"datasets.{name}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(name)):
        # the name becomes a folder, a DVC stage suffix and a dotted params key
        raise ParamsError(f"params.yaml: dataset name {name!r} under 'datasets:' may use only letters, "
                          "digits, '-' and '_'")
    if not isinstance(spec, dict):
        raise ParamsError(f"params.yaml: '{where}' must be a mapping, got {spec!r}")
    kind = _choice(_get(spec, "type", where, str), DATASET_TYPES, f"{where}.type")
    _known_keys(spec, DATASET_KEYS[kind], where)
    if kind == "synthact":
        variant = _choice(_get(spec, "variant", where, str), SYNTHACT_VARIANTS, f"{where}.variant")
        pretrain = variant == "pretrain"  # pretrain draws `clips` at random; targets are per class
        return SynthActSpec(
            name=name,
            variant=variant,
            seed=_get(spec, "seed", where, int),
            clips=_int_at_least(spec, "clips", where, 1) if pretrain else 0,
            val_fraction=_fraction(spec, "val_fraction", where) if pretrain else 0.0,
            train_per_class=0 if pretrain else _int_at_least(spec, "train_per_class", where, 1),
            val_per_class=0 if pretrain else _int_at_least(spec, "val_per_class", where, 1),
            seconds=_seconds(spec, where),
        )
    default_cache = os.environ.get("FOURTIER_DATA") or str(Path.home() / ".cache" / "fourtier" / "datasets")
    if kind in ("kinetics", "k710"):
        version = str(_get(spec, "version", where, (str, int), "400")) if kind == "kinetics" else "710"
        if kind == "kinetics":
            _choice(version, ["400", "600", "700"], f"{where}.version")
        splits = _get(spec, "splits", where, list, ["train", "val"])
        for i, split in enumerate(splits):
            _choice(split, ["train", "val"], f"{where}.splits[{i}]")
        return KineticsSpec(kind=kind, name=name, version=version, splits=tuple(splits),
                            parts=_int_at_least(spec, "parts", where, 0, 0),
                            short_side=_int_at_least(spec, "short_side", where, 0, 320),
                            cache_dir=Path(_get(spec, "cache_dir", where, str, default_cache)).expanduser(),
                            base_url=_get(spec, "base_url", where, str, "").rstrip("/"))
    if kind == "ssv2":
        return SSv2Spec(name=name, root=Path(_get(spec, "root", where, str)).expanduser(),
                        short_side=_int_at_least(spec, "short_side", where, 0, 320))
    if kind in ("ucf101", "hmdb51"):
        split = _int_at_least(spec, "split", where, 1, 1)
        if split > 3:
            raise ParamsError(f"params.yaml: '{where}.split' must be 1, 2 or 3 (the official splits), got {split}")
        return PublicSpec(kind=kind, name=name, split=split,
                          short_side=_int_at_least(spec, "short_side", where, 0, 320),
                          cache_dir=Path(_get(spec, "cache_dir", where, str, default_cache)).expanduser(),
                          archive_url=_get(spec, "archive_url", where, str, ""),
                          splits_url=_get(spec, "splits_url", where, str, ""),
                          archive_sha256=_get(spec, "archive_sha256", where, str, ""),
                          archive_size=_int_at_least(spec, "archive_size", where, 0, 0))
    return FolderSpec(
        name=name,
        root=Path(_get(spec, "root", where, str)),
        csv=Path(_get(spec, "csv", where, str)),
        val_fraction=_fraction(spec, "val_fraction", where, 0.2),
        short_side=_int_at_least(spec, "short_side", where, 0, 0),
        seed=_get(spec, "seed", where, int, 0),
    )


def _dataset_list(raw: dict, key: str, datasets: dict, empty_ok: bool = False) -> tuple[str, ...]:
    names = _get(raw, key, "", list)
    if not names and not empty_ok:
        raise ParamsError(f"params.yaml: '{key}' is an empty list; name at least one dataset "
                          f"(defined under 'datasets:': {', '.join(sorted(datasets))})")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ParamsError(f"params.yaml: '{key}[{i}]' must be a dataset name, got {name!r}")
        _choice(name, sorted(datasets), f"{key}[{i}]", " (defined under 'datasets:')")
    if len(set(names)) != len(names):
        raise ParamsError(f"params.yaml: '{key}' lists a dataset twice: {names}")
    return tuple(names)


def _watch_list(raw: dict, datasets: dict, selected: tuple[str, ...]) -> tuple[str, ...]:
    """`watch`: the datasets whose files DVC re-checks on every run. DVC cannot make a stage's deps depend on a
    dataset's kind, so the user lists them; a selected dataset that reads outside the workspace and is not
    listed would never see its files' changes, so it is an error, not a default."""
    watch = _dataset_list(raw, "watch", datasets, empty_ok=True)
    for i, name in enumerate(watch):
        if datasets[name].kind not in OUTSIDE_KINDS:
            raise ParamsError(f"params.yaml: 'watch[{i}]' is {name!r}, a {datasets[name].kind} dataset, which reads "
                              "nothing from outside the workspace (DVC already tracks all it depends on); "
                              f"remove it from 'watch' (only {' and '.join(OUTSIDE_KINDS)} datasets are watched)")
    unwatched = [n for n in selected if datasets[n].kind in OUTSIDE_KINDS and n not in watch]
    if unwatched:
        listed = ", ".join([*watch, *unwatched])
        raise ParamsError(f"params.yaml: {', '.join(map(repr, unwatched))} reads its label file and videos from "
                          "outside the workspace, where DVC sees a change only in a dataset listed under 'watch'; "
                          f"set watch: [{listed}] in params.yaml (or `dvc exp run -S 'watch=[{listed}]'`), so every "
                          "`dvc repro` re-checks its files (about a second) and re-runs download when one changed")
    return watch


def parse_params(raw: Any) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping at the top level")
    _known_keys(raw, TOP_LEVEL_KEYS, "")
    vlms = _presets(raw, "vlms")
    backbones = _presets(raw, "backbones")
    text_encoders = _presets(raw, "text_encoders")

    K = _get(raw, "K", "", int)
    if K < 1:
        raise ParamsError(f"params.yaml: 'K' (keyframes per tile) must be >= 1, got {K}")

    prompts = _get(raw, "prompts", "", list)
    for i, p in enumerate(prompts):
        _choice(p, PROMPT_IDS, f"prompts[{i}]", " (use [] for the no-prompt baseline)")
    if len(set(prompts)) != len(prompts):
        raise ParamsError(f"params.yaml: 'prompts' lists a prompt twice: {prompts}")

    raw_datasets = _get(raw, "datasets", "", dict)
    datasets = {name: _dataset_spec(name, spec) for name, spec in raw_datasets.items()}
    pretrain = _dataset_list(raw, "pretrain", datasets)
    targets = _dataset_list(raw, "targets", datasets)
    both = sorted(set(pretrain) & set(targets))
    if both:
        raise ParamsError(f"params.yaml: {both} is listed in both 'pretrain' and 'targets'; "
                          "a dataset is either the captioned pretraining corpus or a target")
    watch = _watch_list(raw, datasets, pretrain + targets)

    download = _section(raw, "download", ("shard_above", "shard_size", "parallel"))
    download_params = DownloadParams(shard_above=_int_at_least(download, "shard_above", "download", 0),
                                     shard_size=_int_at_least(download, "shard_size", "download", 1),
                                     parallel=_int_at_least(download, "parallel", "download", 1))
    tile = _section(raw, "tile", ("height", "jpeg_quality", "shard_above", "shard_size"))
    quality = _int_at_least(tile, "jpeg_quality", "tile", 1)
    if quality > 100:
        raise ParamsError(f"params.yaml: 'tile.jpeg_quality' must be in 1..100, got {quality}")
    height = _int_at_least(tile, "height", "tile", 16)
    if K * height > 65500:  # tiling.JPEG_MAX_SIDE; a square video's panels are `height` px wide
        raise ParamsError(f"params.yaml: K={K} panels of tile.height={height} px make tiles at least {K * height:,} px "
                          "wide for square or wider videos, over JPEG's limit of 65,500; lower K or tile.height")
    tile_params = TileParams(
        height=height,
        jpeg_quality=quality,
        shard_above=_int_at_least(tile, "shard_above", "tile", 0),
        shard_size=_int_at_least(tile, "shard_size", "tile", 1),
    )
    caption = _section(raw, "caption", ("prompts", "max_new_tokens", "temperature", "max_failures"))
    prompt_texts = _get(caption, "prompts", "caption", dict)
    if sorted(prompt_texts) != list(PROMPT_IDS) or not all(isinstance(t, str) and t.strip() for t in prompt_texts.values()):
        raise ParamsError("params.yaml: 'caption.prompts' must give a non-empty text for each of A, B, C, D "
                          f"(got keys {sorted(prompt_texts)})")
    caption_params = CaptionParams(prompts=dict(prompt_texts),
                                   max_new_tokens=_int_at_least(caption, "max_new_tokens", "caption", 1),
                                   temperature=_number(caption, "temperature", "caption", 0.0),
                                   max_failures=_fraction(caption, "max_failures", "caption"))
    embed = _section(raw, "embed", ("batch_size", "max_tokens", "max_length"))
    embed_params = EmbedParams(batch_size=_int_at_least(embed, "batch_size", "embed", 1),
                               max_tokens=_int_at_least(embed, "max_tokens", "embed", 1),
                               max_length=_int_at_least(embed, "max_length", "embed", 8))
    features = _section(raw, "features", ("temporal_views", "spatial_views", "batch_size", "cache", "shard_mb"))
    cache = _get(features, "cache", "features", bool, True)
    features_params = FeaturesParams(temporal_views=_int_at_least(features, "temporal_views", "features", 1),
                                     spatial_views=_int_at_least(features, "spatial_views", "features", 1),
                                     batch_size=_int_at_least(features, "batch_size", "features", 1),
                                     cache=cache, shard_mb=_int_at_least(features, "shard_mb", "features", 1, 2048))
    backbone_train = _section(raw, "backbone_train", OPTIM_KEYS + ("corpus", "temporal_views", "flips", "time_reversal",
                                                                   "seed"))
    corpus = _get(backbone_train, "corpus", "backbone_train", str)
    if corpus not in datasets:
        raise ParamsError(f"params.yaml: 'backbone_train.corpus' is {corpus!r}, which is not defined under 'datasets:' "
                          f"(defined: {', '.join(sorted(datasets))})")
    if corpus in targets:
        raise ParamsError(f"params.yaml: 'backbone_train.corpus' is {corpus!r}, a target: the frozen encoder would have "
                          "been trained on the clips it is evaluated on; pretrain it on another dataset")
    backbone_train_params = BackboneTrainParams(
        corpus=corpus,
        optim=_optim(backbone_train, "backbone_train"),
        temporal_views=_int_at_least(backbone_train, "temporal_views", "backbone_train", 1),
        flips=_get(backbone_train, "flips", "backbone_train", bool, True),
        time_reversal=_get(backbone_train, "time_reversal", "backbone_train", bool, True),
        seed=_int_at_least(backbone_train, "seed", "backbone_train", 0))
    align = _section(raw, "align", OPTIM_KEYS + ("seed", "processor", "objective"))
    align_params = AlignParams(optim=_optim(align, "align"), seed=_int_at_least(align, "seed", "align", 0),
                               processor=_choice(_get(align, "processor", "align", str, "attention"), PROCESSORS,
                                                 "align.processor"),
                               objective=_choice(_get(align, "objective", "align", str, "pooled"), OBJECTIVES,
                                                 "align.objective"))
    finetune = _section(raw, "finetune", OPTIM_KEYS + ("arms", "seeds", "label_smoothing", "mixup_alpha", "mixup_prob",
                                                       "shots", "shots_seed"))
    label_smoothing = _number(finetune, "label_smoothing", "finetune", 0.0, 1.0)
    if label_smoothing >= 1.0:
        raise ParamsError(f"params.yaml: 'finetune.label_smoothing' must be below 1, got {label_smoothing}")
    finetune_params = FinetuneParams(optim=_optim(finetune, "finetune"), arms=_arms(finetune, "finetune"),
                                     seeds=_seed_list(finetune, "finetune"), label_smoothing=label_smoothing,
                                     mixup_alpha=_number(finetune, "mixup_alpha", "finetune", 0.0),
                                     mixup_prob=_number(finetune, "mixup_prob", "finetune", 0.0, 1.0),
                                     shots=_int_at_least(finetune, "shots", "finetune", 0, 0),
                                     shots_seed=_int_at_least(finetune, "shots_seed", "finetune", 0, 0))
    runtime = _get(raw, "runtime", "", dict, {})
    _known_keys(runtime, ("device", "workers", "loader_workers", "nproc_per_node", "nnodes", "launcher",
                          "rdzv_endpoint", "stage2_parallel", "timeout_s", "checkpoint_dir"), "runtime")
    loader = runtime.get("loader_workers", "auto")
    if loader != "auto" and (not isinstance(loader, int) or isinstance(loader, bool) or loader < 0):
        raise ParamsError(f"params.yaml: 'runtime.loader_workers' must be auto or a whole number >= 0, got {loader!r}")
    runtime_params = RuntimeParams(workers=_int_at_least(runtime, "workers", "runtime", 1, 2),
                                   device=_choice(_get(runtime, "device", "runtime", str, "auto"), ("auto", "cpu", "cuda"),
                                                  "runtime.device"),
                                   loader_workers=loader,
                                   nproc_per_node=_int_at_least(runtime, "nproc_per_node", "runtime", 1, 1),
                                   nnodes=_int_at_least(runtime, "nnodes", "runtime", 1, 1),
                                   launcher=_choice(_get(runtime, "launcher", "runtime", str, "torchrun"),
                                                    ("torchrun", "srun"), "runtime.launcher"),
                                   rdzv_endpoint=_endpoint(_get(runtime, "rdzv_endpoint", "runtime", str, "")),
                                   stage2_parallel=_choice(_get(runtime, "stage2_parallel", "runtime", str, "runs"),
                                                           ("runs", "ddp"), "runtime.stage2_parallel"),
                                   timeout_s=_int_at_least(runtime, "timeout_s", "runtime", 10, 1800),
                                   checkpoint_dir=_get(runtime, "checkpoint_dir", "runtime", str, ""))
    if runtime_params.nnodes > 1 and runtime_params.launcher == "torchrun" and not runtime_params.rdzv_endpoint:
        raise ParamsError("params.yaml: 'runtime.nnodes' is above 1 with launcher torchrun, so the nodes need a "
                          "meeting point: set 'runtime.rdzv_endpoint' to host:port of the first node (or use "
                          "launcher: srun inside a SLURM allocation)")
    return Params(
        vlm=_selector(raw, "vlm", vlms, "vlms"),
        K=K,
        backbone=_selector(raw, "backbone", backbones, "backbones"),
        text_encoder=_selector(raw, "text_encoder", text_encoders, "text_encoders"),
        prompts=tuple(prompts),
        pretrain=pretrain,
        targets=targets,
        watch=watch,
        datasets=datasets,
        vlms=vlms,
        backbones=backbones,
        text_encoders=text_encoders,
        download=download_params,
        tile=tile_params,
        caption=caption_params,
        embed=embed_params,
        features=features_params,
        backbone_train=backbone_train_params,
        align=align_params,
        finetune=finetune_params,
        runtime=runtime_params,
        raw=raw,
    )


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the project root (where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw)
