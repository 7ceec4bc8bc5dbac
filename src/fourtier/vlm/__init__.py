"""VLM backends: each answers (tile image, prompt) requests and reports one record per answer.

A backend is a small class with `model_id`, `settings` (everything that changes an answer, used in the
cache key: never where the server is, nor how fast) and `run(requests, on_record)`, which calls `on_record` the
moment each answer arrives so the caller can commit it before anything else can go wrong. `requests` is any
iterable, consumed lazily: the caller streams a corpus through one call (fourtier.captioning.caption_chunks),
so a backend takes the next request only when it has room for it, and stops taking when the iterable ends
(which is also how the caller stops it early). `make_backend` builds one from a preset.
"""
from __future__ import annotations

import io
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from fourtier.errors import FourtierError
from fourtier.params import PROMPT_IDS, resolve_preset  # noqa: F401  (PROMPT_IDS re-exported: the order is defined once)


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


# ---------------------------------------------------------------------------------------------
# joint mode (`joint: true` in a vlms preset): the four prompts in one request per tile, one reply parsed into
# four answers. The paper asks four separate questions, which stays the default; joint sends the image once
# instead of four times. A reply that does not parse is asked again as four separate requests (captioning).

JOINT_ID = "joint"
_JOINT_HEAD = ("Answer each of the four questions below about the image. Reply in four parts, each starting on "
               "a new line with the question's letter and a colon (A:, B:, C:, D:), and nothing before part A.")
# a part's first line: optional markdown (#, *, -, **), the letter, optional closing ) or **, then : . or )
_JOINT_PART = re.compile(r"^[ \t]*(?:[#>*_\-]+[ \t]*)?\(?([A-D])\)?(?:\*\*)?[ \t]*[:.)][ \t]*(?:\*\*)?[ \t]*",
                         re.MULTILINE)


def joint_prompt(prompts: dict[str, str]) -> str:
    """The one prompt that asks all four: a short instruction, then each prompt verbatim after its letter."""
    return _JOINT_HEAD + "\n" + "\n".join(f"{pid}: {prompts[pid]}" for pid in PROMPT_IDS)


def format_joint(answers: dict[str, str]) -> str:
    """Four answers as a well-formed joint reply (what the builtin describer says to a joint prompt)."""
    return "\n".join(f"{pid}: {answers[pid]}" for pid in PROMPT_IDS)


def parse_joint(reply: str) -> dict[str, str] | None:
    """The four answers of a joint reply, or None unless parts A, B, C and D each start a line, in that order,
    exactly once, and none is empty."""
    starts = list(_JOINT_PART.finditer(reply))
    if [m.group(1) for m in starts] != list(PROMPT_IDS):
        return None
    parts = {}
    for m, end in zip(starts, [n.start() for n in starts[1:]] + [len(reply)]):
        text = " ".join(reply[m.end():end].split()).strip(" *")
        if not text:
            return None
        parts[m.group(1)] = text
    return parts


def decode_tile(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


# The builtin describer's answers are part of the answer cache's key through its model id. Bump this
# whenever a change to vlm/builtin.py or vlm/perception.py changes any answer, or the cache serves old ones.
DESCRIBER_VERSION = 1


class BuiltinBackend:
    """The offline describer (fourtier.vlm.builtin); `style` full, terse or noisy."""

    def __init__(self, name: str, preset: dict, workers: int = 1):
        self.name = name
        self.style = preset.get("style", "full")
        if self.style not in ("full", "terse", "noisy"):
            raise VLMError(f"vlms.{name}.style is {self.style!r}; use full, terse or noisy")
        self.error_rate = float(preset.get("error_rate", 0.0)) if self.style == "noisy" else 0.0
        self.seed = int(preset.get("seed", 0))
        self.workers = workers
        version = "" if DESCRIBER_VERSION == 1 else f"-v{DESCRIBER_VERSION}"  # v1 kept the keys it had
        self.model_id = f"builtin-{self.style}{version}"
        self.settings = {"style": self.style, "error_rate": self.error_rate, "seed": self.seed}

    def run(self, requests: Iterable[Request], on_record: OnRecord) -> None:
        from fourtier.parallel import map_progress

        for by_tile in tile_groups(requests, TILES_PER_GROUP):  # one analysis per tile answers all of its prompts
            jobs = [(vid, jpeg, k, [r.prompt_id for r in reqs], self.style, self.error_rate, self.seed)
                    for (vid, jpeg, k), reqs in by_tile.items()]
            for (_, reqs), (answers, seconds) in zip(by_tile.items(), map_progress(_describe_job, jobs, self.workers,
                                                                                    "caption builtin")):
                for r in reqs:
                    on_record(r, Record(r.video_id, r.prompt_id, answers[r.prompt_id], latency_s=seconds / len(reqs)))


TILES_PER_GROUP = 1024  # the builtin describer takes a stream this many tiles at a time (build_requests' chunk)


def tile_groups(requests: Iterable[Request], tiles: int) -> Iterator[dict[tuple, list[Request]]]:
    """The requests grouped by tile, at most `tiles` tiles a group, taken from the stream as needed. A tile's
    requests arrive together (build_requests), so a group never splits them."""
    group: dict[tuple, list[Request]] = {}
    for r in requests:
        tile = (r.video_id, r.tile_jpeg, r.K)
        if tile not in group and len(group) >= tiles:
            yield group
            group = {}
        group.setdefault(tile, []).append(r)
    if group:
        yield group


def _describe_job(job):
    from fourtier.vlm.builtin import describe

    video_id, jpeg, k, prompt_ids, style, error_rate, seed = job
    start = time.perf_counter()
    wanted = PROMPT_IDS if JOINT_ID in prompt_ids else prompt_ids
    answers = describe(decode_tile(jpeg), k, wanted, style, error_rate, seed, key=video_id)
    if JOINT_ID in prompt_ids:
        answers[JOINT_ID] = format_joint(answers)
    return answers, time.perf_counter() - start


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
        backend = BuiltinBackend(name, preset, workers)
    elif kind == "openai":
        from fourtier.vlm.openai_backend import OpenAIBackend

        backend = OpenAIBackend(name, preset, generation)
    elif kind == "hf":
        from fourtier.vlm.hf_backend import HFBackend

        backend = HFBackend(name, preset, generation)
    else:
        raise VLMError(f"vlms.{name}.type is {kind!r}; use builtin, openai or hf")
    backend.joint = joint
    if joint:  # other answers than four separate questions get: other cache keys
        backend.settings = {**backend.settings, "joint": True}
    return backend


_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """A value that must never appear in an output, a log or a message (an API key)."""
    if value and len(value) >= 8:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Remove anything that looks like a secret before it reaches a log, an output or an error message."""
    import re

    for value in _SECRETS | {os.environ.get("OPENAI_API_KEY", "")}:
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return re.sub(r"(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*]{6,}", r"\1***", text)
