"""What every params section shares: the pydantic base class, the value types, the translation of pydantic's
errors into one message per bad value, and `load_params`.

A section is a pydantic model with `extra="forbid"`: a key no section reads (a typo that would silently keep
the default) is an error naming the closest valid key. Whole numbers, booleans and strings are strict (YAML's
`yes` is not a number, `1` is not text); a real number takes an int or a float, and says when YAML read what
looks like one as text (`1e-3` without a dot). Each message names the key path, the bad value, what is
allowed and, where it helps, the fix; the stage then exits with status 2 and no traceback (fourtier.errors).

The sections are grouped by the stages that read them, one module each (config/data.py, caption.py, text.py,
model.py, train.py, runtime.py). A stage imports the groups it reads and passes them to `load_params`, so its
DVC deps are the schemas of what it reads, and an edit to one group's schema re-runs only the stages that read
it. `load_params` still validates the whole file, every group, before any stage works: the groups a stage does
not read are imported by name (GROUPS), only to reject a bad value early; the object it returns holds only
the sections the stage asked for.
"""
from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError,
                      field_validator, model_validator)

from fourtier.errors import ParamsError

PROMPT_IDS = ("A", "B", "C", "D")

# the group modules, in the order of the pipeline; each defines one model named GROUP
GROUPS = ("fourtier.config.data", "fourtier.config.caption", "fourtier.config.text", "fourtier.config.model",
          "fourtier.config.train", "fourtier.config.runtime")


class Invalid(ValueError):
    """A bad value found by a validator. `{at}` in the message stands for the key path of what was validated."""


class Section(BaseModel):
    """A params section (or dataset spec): typed, immutable, and no key it does not define."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    _raw: dict = PrivateAttr(default_factory=dict)

    @property
    def raw(self) -> dict:
        """params.yaml as read (what a stage hashes into a cache key: the user's own spelling)."""
        return self._raw

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = [name for name, f in cls.model_fields.items() if not f.exclude]  # excluded: set by code
            for key in data:
                if key not in cls.model_fields:
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else f" (valid: {', '.join(allowed)})"
                    raise Invalid(f"unknown key '{{at.}}{key}'{hint}")
        return data


def _real(value: Any) -> float:
    """A real number: an int or a float, not a bool; YAML reads 1e-3 (no dot) as text, so say so."""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
        except ValueError:
            hint = ""
        raise Invalid(f"'{{at}}' must be a number, got {value!r}{hint}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"'{{at}}' must be a number, got {value!r} ({type(value).__name__})")
    if value != value:
        raise Invalid("'{at}' must be a number, got nan")
    return float(value)


Real = Annotated[float, BeforeValidator(_real)]


def _path(value: Any):
    """A path written as text (pydantic would take other types it can turn into a Path, or say less)."""
    if not isinstance(value, (str, Path)):
        raise Invalid(f"'{{at}}' must be str, got {value!r} ({type(value).__name__})")
    return value


PathText = Annotated[Path, BeforeValidator(_path)]


def _presets(value: Any) -> dict[str, dict]:
    """A presets section (vlms, backbones, text_encoders): name -> mapping, backend keys checked by the backend."""
    if not isinstance(value, dict) or not value:
        raise Invalid("'{at}' must define at least one preset")
    for name, preset in value.items():
        if not isinstance(preset, dict):
            raise Invalid(f"preset '{{at}}.{name}' must be a mapping, got {preset!r}")
    return value


Presets = Annotated[dict, BeforeValidator(_presets)]


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warm-up then cosine decay (paper Tables A2/A3): one per training section."""
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_epochs: float


class Optimised(Section):
    """The optimiser's keys, written flat in a training section."""
    epochs: StrictInt = Field(ge=1)
    batch_size: StrictInt = Field(ge=1)
    lr: Real = Field(gt=0.0)
    weight_decay: Real = Field(ge=0.0)
    betas: list
    warmup_epochs: Real = Field(ge=0.0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: list) -> tuple[float, float]:
        if len(value) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                      for b in value):
            raise Invalid(f"'{{at}}' must be two numbers in [0, 1), got {value!r}")
        return (float(value[0]), float(value[1]))

    @property
    def optim(self) -> OptimSettings:
        return OptimSettings(self.epochs, self.batch_size, self.lr, self.weight_decay, self.betas, self.warmup_epochs)


_TYPE_NAMES = {"int_type": "int", "bool_type": "bool", "string_type": "str", "list_type": "list",
               "tuple_type": "list", "dict_type": "a mapping", "model_type": "a mapping",
               "model_attributes_type": "a mapping", "float_type": "a number"}


def _dotted(loc: tuple, raw: Any) -> str:
    """('finetune', 'arms', 1) -> 'finetune.arms[1]'; the tag pydantic puts in the path of a discriminated
    union's member (a dataset spec's `type` value) is not a key of the file, so it is left out."""
    out, node = "", raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue  # the union's tag
        out += f".{part}" if out else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return out


def _choices(expected: str) -> str:
    return ", ".join(re.findall(r"'([^']*)'", expected)) or expected


def describe(error: dict, raw: Any) -> str:
    """One pydantic error as the message a user can act on."""
    kind, loc, value, ctx = error["type"], error["loc"], error.get("input"), error.get("ctx") or {}
    at = _dotted(loc, raw)
    if kind == "value_error" and isinstance(ctx.get("error"), Invalid):
        return str(ctx["error"]).replace("{at.}", f"{at}." if at else "").replace("{at}", at)
    if kind == "missing":
        return f"missing key '{at}'"
    if kind == "literal_error":
        return f"'{at}' is {value!r}, which is not one of: {_choices(ctx.get('expected', ''))}"
    if kind == "union_tag_invalid":
        return f"'{at}.type' is {ctx.get('tag')!r}, which is not one of: {_choices(ctx.get('expected_tags', ''))}"
    if kind == "union_tag_not_found":
        return f"missing key '{at}.type'"
    if kind in _TYPE_NAMES:
        return f"'{at}' must be {_TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__})"
    bounds = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
              "less_than": "below {lt}"}
    if kind in bounds:
        return f"'{at}' must be {bounds[kind].format(**ctx)}, got {value}"
    return f"'{at}': {error['msg']}, got {value!r}"


def validate(model: type[BaseModel], raw: Any):
    """model validated from raw, or a ParamsError with a line per bad value."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = list(dict.fromkeys(describe(e, raw) for e in exc.errors(include_url=False)))
        raise ParamsError("\n".join(f"params.yaml: {line}" for line in lines)) from None


def _combined(groups: tuple[type[Section], ...]) -> type[Section]:
    """One model of several groups (their fields and validators; a validator's name is unique across groups,
    or one group's would hide another's)."""
    if len(groups) == 1:
        return groups[0]
    return type("Params", groups, {"__module__": __name__})


def read_yaml(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the project root (where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return raw


def all_groups() -> tuple[type[Section], ...]:
    return tuple(importlib.import_module(name).GROUP for name in GROUPS)


def parse_params(raw: Any, *groups: type[Section]):
    """The sections of `groups` (default: all) from a parsed params.yaml, after validating every group."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping at the top level")
    everything = all_groups()
    full = validate(_combined(everything), raw)  # a top-level typo too: Section._known_keys of the whole model
    wanted = groups or everything
    view = _combined(wanted)
    params = view.model_construct(**{name: getattr(full, name) for name in view.model_fields})
    params._raw = raw
    return params


def load_params(*groups: type[Section], path: str | Path = "params.yaml"):
    """params.yaml (or `path`), validated whole; the returned object holds the sections of `groups` (default:
    all)."""
    return parse_params(read_yaml(path), *groups)


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


def check_selector(value: str, presets: dict[str, dict], key: str, presets_key: str) -> str:
    """A model selector that names something resolve_preset knows, or the message with the three forms."""
    if resolve_preset(value, presets) is None:
        raise Invalid(f"'{key}' is {value!r}, which is not one of: {', '.join(sorted(presets))} (presets under "
                      f"'{presets_key}:', hf:<model id>, or the path of a local model folder)")
    return value




def unique(values, at: str, what: str):
    if len(set(values)) != len(values):
        raise Invalid(f"'{at}' lists {what} twice: {list(values)}")
    return values
