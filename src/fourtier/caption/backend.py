"""VLM backends: each answers (tile image, prompt) requests and reports one record per answer.

A backend is a small class with `model_id`, `settings` (everything that changes an answer, used in the
cache key: never where the server is, nor how fast) and `run(requests, on_record)`, which calls `on_record` the
moment each answer arrives so the caller can commit it before anything else can go wrong. `requests` is any
iterable, consumed lazily: the caller streams a corpus through one call (fourtier.caption.runner.caption_chunks),
so a backend takes the next request only when it has room for it, and stops taking when the iterable ends
(which is also how the caller stops it early). `make_backend` builds one from a preset.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from fourtier.config.base import resolve_preset
from fourtier.errors import FourtierError


class VLMError(FourtierError):
    """A VLM cannot be used at all (unknown preset, missing key, auth failure, unreachable server)."""


@dataclass(frozen=True)
class Request:
    video_id: str
    prompt_id: str
    prompt: str
    tile_jpeg: bytes
    K: int
    key: str  # content address of the answer
    parts: tuple = ()  # a joint request: the (prompt_id, key) of each answer its reply carries


@dataclass
class Record:
    video_id: str
    prompt_id: str
    answer: str
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.answer.strip())


OnRecord = Callable[[Request, Record], None]


def decode_tile(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def make_backend(name: str, presets: dict, generation: dict, workers: int = 1):
    """The backend for selector value `name`: a preset under `vlms:`, hf:<model id>, or a local directory."""
    preset = resolve_preset(name, presets)
    if preset is None:
        raise VLMError(f"unknown VLM {name!r}: use a preset under 'vlms:' ({', '.join(sorted(presets))}), "
                       "hf:<model id>, or a local model directory")
    kind = preset.get("type")
    joint = preset.get("joint", False)
    if not isinstance(joint, bool):
        raise VLMError(f"vlms.{name}.joint is {joint!r}; use true (the four prompts in one request per tile) or "
                       "false (four requests, as in the paper)")
    if joint:  # one reply carries four answers
        generation = {**generation, "max_new_tokens": 4 * generation["max_new_tokens"]}
    if kind == "builtin":
        from fourtier.caption.builtin import BuiltinBackend

        backend = BuiltinBackend(name, preset, workers)
    elif kind == "openai":
        from fourtier.caption.openai_backend import OpenAIBackend

        backend = OpenAIBackend(name, preset, generation)
    elif kind == "hf":
        from fourtier.caption.hf_backend import HFBackend

        backend = HFBackend(name, preset, generation)
    else:
        raise VLMError(f"vlms.{name}.type is {kind!r}; use builtin, openai or hf")
    backend.joint = joint
    if joint:  # other answers than four separate questions get: other cache keys
        backend.settings = {**backend.settings, "joint": True}
    return backend
