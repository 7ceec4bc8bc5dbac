"""The data group of params.yaml: `datasets` (one spec per name, a kind each), the `pretrain`, `targets` and
`watch` lists, `download`, and the cross-dataset tests between targets (`cross_dataset`).

A dataset kind is defined here and only here: its spec class (the keys it takes, with their types and
defaults), the module under fourtier/data/ that downloads it (`downloader`), whether that module fetches many
archives at once (`parallel_archives`) and whether it reads files from outside the workspace, which DVC sees
only through `watch:` (`reads_outside`; README, "Your own videos"). Adding a kind is a spec class here and its
module under src/fourtier/data/.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from fourtier.config.base import Invalid, PathText, Real, Section, unique, validate
from fourtier.errors import ParamsError


def _default_cache() -> Path:
    return Path(os.environ.get("FOURTIER_DATA") or Path.home() / ".cache" / "fourtier" / "datasets")


class DatasetSpec(Section):
    """What every kind has: its name (the key under datasets:, set by DataParams, not written in the file)."""
    name: str = Field("", exclude=True)
    downloader: ClassVar[str]
    parallel_archives: ClassVar[bool] = False
    reads_outside: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        return self.type


class SynthActSpec(DatasetSpec):
    """SynthAct (fourtier.data.synthact): `pretrain` draws `clips` at random; `scenes` and `motion` are per class."""
    downloader: ClassVar[str] = "fourtier.data.synthact"
    type: Literal["synthact"] = "synthact"
    variant: Literal["pretrain", "scenes", "motion"]
    seed: StrictInt
    clips: StrictInt = Field(0, ge=1)  # pretrain only: total clips
    val_fraction: Real = Field(0.0, ge=0.0, lt=1.0)  # pretrain only
    train_per_class: StrictInt = Field(0, ge=1)  # targets only
    val_per_class: StrictInt = Field(0, ge=1)  # targets only
    seconds: tuple[Real, Real] = (2.0, 4.0)  # clip duration, drawn uniformly in this range
    shift: Literal["none", "deploy"] = "none"  # deploy: the shifted test (README, "A shifted test")

    @field_validator("seconds")
    @classmethod
    def _range(cls, value):
        if not 0 < value[0] <= value[1]:
            raise Invalid(f"'{{at}}' must be [low, high] with 0 < low <= high (seconds), got {list(value)!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _per_variant(cls, data):
        """The keys a variant needs must be given (the others are not read and stay 0)."""
        if isinstance(data, dict) and data.get("variant") in ("pretrain", "scenes", "motion"):
            need = ("clips", "val_fraction") if data["variant"] == "pretrain" else ("train_per_class", "val_per_class")
            unread = ("train_per_class", "val_per_class") if data["variant"] == "pretrain" else ("clips", "val_fraction")
            for key in need:
                if key not in data:
                    raise Invalid(f"missing key '{{at.}}{key}'")
            data = {k: v for k, v in data.items() if k not in unread}
        return data


class FolderSpec(DatasetSpec):
    """Your own videos: a folder and a CSV of path,label[,split] (fourtier.data.folder)."""
    downloader: ClassVar[str] = "fourtier.data.folder"
    reads_outside: ClassVar[bool] = True
    type: Literal["folder"] = "folder"
    root: PathText
    csv: PathText
    val_fraction: Real = Field(0.2, ge=0.0, lt=1.0)  # used for rows whose CSV has no split
    short_side: StrictInt = Field(0, ge=0)  # 0 = keep the videos as they are (still validated)
    seed: StrictInt = 0


class PublicSpec(DatasetSpec):
    """UCF-101 or HMDB51 from the official archives (fourtier.data.public)."""
    downloader: ClassVar[str] = "fourtier.data.public"
    type: Literal["ucf101", "hmdb51"]
    # the official split: 1-3, a list of them, or all (the three-split protocol: one stage-2 run per split, the
    # mean and sample std over splits reported; README, "Three splits")
    split: Union[StrictInt, Literal["all"], list[StrictInt]] = 1
    short_side: StrictInt = Field(320, ge=0)  # normalised short side (0 = keep as is)
    cache_dir: Path = Field(default_factory=_default_cache)  # archives and extracted videos, outside the workspace
    archive_url: StrictStr = ""  # "" = the official location
    splits_url: StrictStr = ""
    archive_sha256: StrictStr = ""  # "" = not pinned (the downloaded file's sha256 is recorded in the manifest)
    archive_size: StrictInt = Field(0, ge=0)  # 0 = not pinned

    @field_validator("split", mode="before")
    @classmethod
    def _splits(cls, value):
        official = lambda s: isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 3  # noqa: E731
        if not (official(value) or value == "all" or isinstance(value, list) and value
                and all(official(s) for s in value) and len(set(value)) == len(value)):
            raise Invalid(f"'{{at}}' must be an official split (1, 2 or 3), a list of distinct ones, or 'all'; "
                          f"got {value!r}")
        return value

    @property
    def splits(self) -> tuple[int, ...]:
        """The official splits this dataset is run on, ascending: the first fills the `split` column and is the
        one zeroshot, the plots and cross-dataset tests use."""
        return (self.split,) if isinstance(self.split, int) else (1, 2, 3) if self.split == "all" else tuple(sorted(self.split))

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class KineticsSpec(DatasetSpec):
    """Kinetics-400/600/700 (kind kinetics) or K710 (kind k710) from the CVDF mirror (fourtier.data.kinetics)."""
    downloader: ClassVar[str] = "fourtier.data.kinetics"
    parallel_archives: ClassVar[bool] = True
    type: Literal["kinetics", "k710"]
    version: Literal["400", "600", "700", "710"] = "400"  # 700 = Kinetics-700-2020; k710 is always 710
    splits: tuple[Literal["train", "val"], ...] = ("train", "val")
    parts: StrictInt = Field(0, ge=0)  # 0 = every archive part; N = the first N parts of each split (a subset)
    short_side: StrictInt = Field(320, ge=0)
    cache_dir: Path = Field(default_factory=_default_cache)
    base_url: StrictStr = ""  # "" = the CVDF mirror

    @model_validator(mode="before")
    @classmethod
    def _version(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            if data.get("type") == "k710":
                if "version" in data:
                    raise Invalid("unknown key '{at.}version' (k710 has one version; use type: kinetics for "
                                  "400, 600 or 700)")
                data["version"] = "710"
            elif isinstance(data.get("version"), int) and not isinstance(data.get("version"), bool):
                data["version"] = str(data["version"])
            elif data.get("version") == "710":
                raise Invalid("'{at}.version' is '710', which is not one of: 400, 600, 700 (use type: k710)")
        return data

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("base_url", mode="after")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.rstrip("/")


class SSv2Spec(DatasetSpec):
    """Something-Something V2 from a local copy (fourtier.data.ssv2)."""
    downloader: ClassVar[str] = "fourtier.data.ssv2"
    reads_outside: ClassVar[bool] = True
    type: Literal["ssv2"] = "ssv2"
    root: PathText
    short_side: StrictInt = Field(320, ge=0)

    @field_validator("root", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


AnySpec = Annotated[Union[SynthActSpec, FolderSpec, PublicSpec, KineticsSpec, SSv2Spec], Field(discriminator="type")]
KINDS = {kind: cls for cls in (SynthActSpec, FolderSpec, PublicSpec, KineticsSpec, SSv2Spec)
         for kind in cls.model_fields["type"].annotation.__args__}
OUTSIDE_KINDS = tuple(kind for kind, cls in KINDS.items() if cls.reads_outside)


class DownloadParams(Section):
    shard_above: StrictInt = Field(ge=0)  # more clips: the videos go into zip shards (one DVC file per shard)
    shard_size: StrictInt = Field(ge=1)  # clips per shard
    parallel: StrictInt = Field(ge=1)  # archives (e.g. Kinetics parts) fetched and unpacked at once: speed only


class CrossDataset(Section):
    """One cross-dataset test (fourtier.evaluation.transfer): `train`'s stage-2 models on `test`'s clips of the
    classes `class_map` pairs."""
    train: StrictStr
    test: StrictStr
    class_map: PathText  # CSV train_class,test_class (README, "Across datasets")
    on: Literal["val", "all"] = "val"  # the test dataset's clips: its validation (test) split, or every clip


class DataParams(Section):
    datasets: dict[StrictStr, AnySpec]
    pretrain: tuple[StrictStr, ...]
    targets: tuple[StrictStr, ...]
    watch: tuple[StrictStr, ...]
    download: DownloadParams
    cross_dataset: tuple[CrossDataset, ...] = ()  # targets tested on other targets' shared classes

    @field_validator("datasets", mode="before")
    @classmethod
    def _names(cls, value):
        if isinstance(value, dict):
            for name, spec in value.items():
                # the name becomes a folder, a DVC stage suffix and a dotted params key
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(name)):
                    raise Invalid(f"dataset name {name!r} under 'datasets:' may use only letters, digits, '-' and '_'")
                if isinstance(spec, dict) and "name" in spec:  # the key under datasets: is the name
                    raise Invalid(f"unknown key 'datasets.{name}.name': a dataset's name is its key under 'datasets:'")
        return value

    @field_validator("datasets", mode="after")
    @classmethod
    def _named(cls, value: dict) -> dict:
        return {name: spec.model_copy(update={"name": name}) for name, spec in value.items()}

    @model_validator(mode="after")
    def _lists(self):
        for key in ("pretrain", "targets", "watch"):
            names = getattr(self, key)
            if not names and key != "watch":
                raise Invalid(f"'{key}' is an empty list; name at least one dataset (defined under 'datasets:': "
                              f"{', '.join(sorted(self.datasets))})")
            for i, name in enumerate(names):
                if name not in self.datasets:
                    raise Invalid(f"'{key}[{i}]' is {name!r}, which is not one of: {', '.join(sorted(self.datasets))} "
                                  "(defined under 'datasets:')")
            unique(names, key, "a dataset")
        both = sorted(set(self.pretrain) & set(self.targets))
        if both:
            raise Invalid(f"{both} is listed in both 'pretrain' and 'targets'; a dataset is either the captioned "
                          "pretraining corpus or a target")
        self._watched()
        self._crossed()
        return self

    def _crossed(self) -> None:
        """Both datasets of a cross-dataset test are targets: the one's models and the other's m are theirs."""
        pairs = set()
        for i, entry in enumerate(self.cross_dataset):
            for key in ("train", "test"):
                name = getattr(entry, key)
                if name not in self.targets:
                    raise Invalid(f"'cross_dataset[{i}].{key}' is {name!r}, which is not listed under 'targets' "
                                  f"({', '.join(self.targets)}); a cross-dataset test reads the stage-2 models of its "
                                  "train dataset and the features of its test dataset, which only targets have")
            if entry.train == entry.test:
                raise Invalid(f"'cross_dataset[{i}]' tests {entry.train!r} on itself; the evaluate stage does that")
            if (entry.train, entry.test) in pairs:
                raise Invalid(f"'cross_dataset[{i}]' repeats {entry.train!r} -> {entry.test!r}")
            pairs.add((entry.train, entry.test))
            if not entry.class_map.is_file():
                raise Invalid(f"'cross_dataset[{i}].class_map' is {str(entry.class_map)!r}, which is not a file (a "
                              "CSV with the header train_class,test_class; README, \"Across datasets\")")

    def _watched(self) -> None:
        """`watch`: the datasets whose files DVC re-checks on every run. DVC cannot make a stage's deps depend on
        a dataset's kind, so the user lists them; a selected dataset that reads outside the workspace and is not
        listed would never see its files' changes, so it is an error, not a default."""
        for i, name in enumerate(self.watch):
            spec = self.datasets[name]
            if not spec.reads_outside:
                raise Invalid(f"'watch[{i}]' is {name!r}, a {spec.kind} dataset, which reads nothing from outside the "
                              "workspace (DVC already tracks all it depends on); remove it from 'watch' (only "
                              f"{' and '.join(OUTSIDE_KINDS)} datasets are watched)")
        unwatched = [n for n in self.pretrain + self.targets if self.datasets[n].reads_outside and n not in self.watch]
        if unwatched:
            listed = ", ".join([*self.watch, *unwatched])
            raise Invalid(f"{', '.join(map(repr, unwatched))} reads its label file and videos from outside the "
                          "workspace, where DVC sees a change only in a dataset listed under 'watch'; set "
                          f"watch: [{listed}] in params.yaml (or `dvc exp run -S 'watch=[{listed}]'`), so every "
                          "`dvc repro` re-checks its files (about a second) and re-runs download when one changed")

    def dataset(self, name: str) -> AnySpec:
        if name not in self.datasets:
            raise ParamsError(f"dataset {name!r} is not defined under 'datasets:' in params.yaml "
                              f"(defined: {', '.join(sorted(self.datasets))})")
        return self.datasets[name]


class _OneDataset(Section):
    datasets: dict[StrictStr, AnySpec]


def dataset_spec(name: str, spec: dict) -> AnySpec:
    """One spec validated on its own (a test's or a tool's dataset that is not in params.yaml)."""
    return DataParams._named(validate(_OneDataset, {"datasets": {name: spec}}).datasets)[name]


GROUP = DataParams
