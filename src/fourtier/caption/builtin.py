"""The `builtin` VLM: a rule-based describer of the tile image, offline and deterministic.

It receives exactly what a real VLM receives, the tile image c and K, and answers the four prompts from
what `perception` measures. Each prompt gets its own kind of answer:
  A  a short action phrase;
  B  the components: objects, attributes, each one's movement, interactions;
  C  a detailed frame-by-frame narrative;
  D  the context: scene, lighting, static objects, camera.
Styles: `full`; `terse` (one short sentence per prompt, like a weak VLM); `noisy` (the full answer with
colours, shapes and directions replaced by wrong ones at a seeded rate `error_rate`). BuiltinBackend serves it
through the backend interface (fourtier.caption.backend), one analysis per tile in a pool of processes.
"""
from __future__ import annotations

import hashlib
import re
import time
from typing import Iterable, Iterator

import numpy as np

from fourtier.caption.backend import OnRecord, Record, Request, VLMError, decode_tile
from fourtier.caption.joint import JOINT_ID, format_joint
from fourtier.caption.perception import Blob, COLOUR_NAMES, TileFacts, Track, analyse_tile
from fourtier.config.base import PROMPT_IDS

SCENE_PHRASES = {
    "grass": "a grass field", "sand": "a sandy beach", "water": "open water", "snow": "a snowy slope",
    "road": "a road", "wooden floor": "a wooden floor", "night sky": "the night sky", "brick wall": "a brick wall",
}
SHAPE_WORDS = {"ball": "ball", "box": "box", "triangle": "triangle", "ring": "ring", "cross": "cross"}
MOTION_PHRASES = {
    "moves": "moving to the {direction}", "zigzags": "zigzagging to the {direction}", "rises": "rising",
    "falls": "falling", "bounces": "bouncing", "jumps": "jumping once", "grows": "growing larger",
    "shrinks": "shrinking", "spins": "spinning", "moves in a circle": "moving in a circle",
    "stays still": "staying still", "unknown": "",
}


def _size_word(area: float) -> str:
    return "large" if area > 0.06 else "small" if area < 0.02 else "medium-sized"


def _where(b: Blob) -> str:
    v = "top" if b.y < 0.36 else "bottom" if b.y > 0.64 else "middle"
    h = "left" if b.x < 0.36 else "right" if b.x > 0.64 else "centre"
    if v == "middle" and h == "centre":
        return "the centre"
    if v == "middle":
        return f"the {h}"
    return f"the {v} {h}" if h != "centre" else f"the {v}"


def _name(track: Track) -> str:
    b = track.first
    return f"{b.colour} {SHAPE_WORDS[b.shape]}"


def _a(phrase: str) -> str:
    """Phrase with its indefinite article."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _motion(track: Track) -> str:
    return MOTION_PHRASES[track.motion].format(direction=track.direction or "side")


def _lighting(facts: TileFacts) -> str:
    b = facts.background.brightness
    return "dark" if b < 0.25 else "dim" if b < 0.45 else "bright" if b > 0.7 else "even"


def _actors(facts: TileFacts) -> tuple[Track | None, list[Track]]:
    if not facts.tracks:
        return None, []
    # small static blobs are scenery, not actors
    main = facts.tracks[0]
    others = [t for t in facts.tracks[1:] if t.motion != "stays still" or np.mean([b.area for b in t.present()]) > 0.015]
    return main, others


def answer_a(facts: TileFacts) -> str:
    main, others = _actors(facts)
    scene = SCENE_PHRASES[facts.background.scene]
    if not facts.structured or main is None:
        return "It is unclear what action is shown."
    if facts.interaction and others:
        verb = "pushing" if facts.interaction == "pushes" else "approaching"
        return f"{_a(_name(main)).capitalize()} {verb} {_a(_name(others[0]))} on {scene}."
    if facts.K == 1:
        return f"{_a(_name(main)).capitalize()} on {scene}."
    return f"{_a(_name(main)).capitalize()} {_motion(main)} on {scene}."


def answer_b(facts: TileFacts) -> str:
    main, others = _actors(facts)
    if not facts.structured or main is None:
        colours = ", ".join(facts.dominant_colours)
        return (f"The image shows {facts.K} frame{'s' if facts.K > 1 else ''}. No distinct objects can be "
                f"separated from the background; the dominant colours are {colours}.")
    parts = []
    objects = [main] + others
    listing = " and ".join(_a(f"{_size_word(t.first.area)} {_name(t)}") for t in objects)
    parts.append(f"Objects: {listing}.")
    for t in objects:
        if facts.K == 1:
            parts.append(f"The {_name(t)} is in {_where(t.first)}.")
        else:
            parts.append(f"The {_name(t)} is {_motion(t)}.")
    if facts.interaction and others:
        verb = "pushes" if facts.interaction == "pushes" else "moves towards"
        parts.append(f"Interaction: the {_name(main)} {verb} the {_name(others[0])}.")
    else:
        parts.append("Interaction: none." if len(objects) > 1 else "There is one object.")
    parts.append(f"Surface: {SCENE_PHRASES[facts.background.scene]}.")
    return " ".join(parts)


def answer_c(facts: TileFacts) -> str:
    main, others = _actors(facts)
    k = facts.K
    if not facts.structured or main is None:
        if k == 1:
            return f"A single frame, {_lighting(facts)} overall, mostly {', '.join(facts.dominant_colours)}."
        changes = ", ".join("large" if c > 0.08 else "small" for c in facts.change)
        return (f"{k} frames, {_lighting(facts)} overall, mostly {', '.join(facts.dominant_colours)}. "
                f"The change from one frame to the next is {changes}.")
    sentences = []
    scene = SCENE_PHRASES[facts.background.scene]
    for i, b in enumerate(main.blobs):
        ordinal = f"In frame {i + 1}" if k > 1 else "In the frame"
        if b is None:
            sentences.append(f"{ordinal}, the {_name(main)} is not visible.")
            continue
        extra = ""
        if others and others[0].blobs[i] is not None:
            extra = f", and the {_name(others[0])} is in {_where(others[0].blobs[i])}"
        sentences.append(f"{ordinal}, the {_size_word(b.area)} {_name(main)} is in {_where(b)} of {scene}{extra}.")
    if k > 1:
        if facts.interaction and others:
            verb = "pushes" if facts.interaction == "pushes" else "approaches"
            sentences.append(f"Overall, the {_name(main)} {verb} the {_name(others[0])}.")
        else:
            sentences.append(f"Overall, the {_name(main)} is {_motion(main)}.")
    return " ".join(sentences)


def answer_d(facts: TileFacts) -> str:
    bg = facts.background
    if not facts.structured:
        return (f"The scene is {_lighting(facts)}, with dominant colours {', '.join(facts.dominant_colours)}. "
                "The setting cannot be identified.")
    texture = "textured" if bg.texture > 12 else "smooth"
    parts = [f"The scene is {SCENE_PHRASES[bg.scene]}, {_a(f'{texture} {bg.colour} surface')} with {_lighting(facts)} lighting."]
    main, others = _actors(facts)
    scenery = [t for t in facts.tracks if t is not main and t not in others]
    if scenery:
        listing = ", ".join(f"a small {_name(t)} in {_where(t.first)}" for t in scenery[:3])
        parts.append(f"Static objects: {listing}.")
    else:
        parts.append("There are no other objects.")
    if facts.K > 1:
        parts.append("The camera shakes slightly." if facts.camera_shake else "The camera is steady.")
    return " ".join(parts)


ANSWERS = {"A": answer_a, "B": answer_b, "C": answer_c, "D": answer_d}


def terse(prompt_id: str, facts: TileFacts) -> str:
    """One short sentence per prompt, like a weak VLM."""
    main, _ = _actors(facts)
    if not facts.structured or main is None:
        return {"A": "Unclear.", "B": "Some shapes.", "C": "Things change.", "D": "Unknown place."}[prompt_id]
    shape = SHAPE_WORDS[main.first.shape]
    if prompt_id == "A":
        return f"{_a(shape).capitalize()} {main.motion if facts.K > 1 and main.motion != 'unknown' else 'is shown'}."
    if prompt_id == "B":
        return f"{_a(f'{main.first.colour} {shape}').capitalize()}."
    if prompt_id == "C":
        return f"The {shape} {main.motion if facts.K > 1 and main.motion != 'unknown' else 'is visible'}."
    return f"On {SCENE_PHRASES[facts.background.scene]}."


_SWAPS = {
    "colour": list(COLOUR_NAMES)[:8],
    "shape": list(SHAPE_WORDS.values()),
    "direction": ["left", "right"],
    "vertical": ["rising", "falling"],
}


_WORD_GROUP = {w: group for group, ws in _SWAPS.items() for w in ws}
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _WORD_GROUP), key=len, reverse=True)) + r")\b")


def add_noise(text: str, rate: float, seed: int, key: str) -> str:
    """Replace colour, shape and direction words by wrong ones at `rate`, seeded by key.

    A word is swapped consistently within one answer, as a VLM that misreads a colour keeps misreading it.
    """
    rng = np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])
    mapping = {}
    for word in dict.fromkeys(_SWAP_RE.findall(text)):
        if rng.random() < rate:
            options = [w for w in _SWAPS[_WORD_GROUP[word]] if w != word]
            mapping[word] = options[int(rng.integers(len(options)))]
    return _SWAP_RE.sub(lambda m: mapping.get(m.group(1), m.group(1)), text)


def describe(tile: np.ndarray, k: int, prompt_ids, style: str = "full", error_rate: float = 0.0, seed: int = 0,
             key: str = "") -> dict[str, str]:
    """Answers to the given prompts (ids A-D) for one tile."""
    facts = analyse_tile(tile, k)
    out = {}
    for pid in prompt_ids:
        if style == "terse":
            out[pid] = terse(pid, facts)
        else:
            text = ANSWERS[pid](facts)
            out[pid] = add_noise(text, error_rate, seed, f"{key}:{pid}") if style == "noisy" else text
    return out


# The builtin describer's answers are part of the answer cache's key through its model id. Bump this
# whenever a change to this module or caption/perception.py changes any answer, or the cache serves old ones.
DESCRIBER_VERSION = 1


class BuiltinBackend:
    """The offline describer (`describe` above) as a backend; `style` full, terse or noisy."""

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
        from fourtier.runtime.parallel import map_progress

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
    video_id, jpeg, k, prompt_ids, style, error_rate, seed = job
    start = time.perf_counter()
    wanted = PROMPT_IDS if JOINT_ID in prompt_ids else prompt_ids
    answers = describe(decode_tile(jpeg), k, wanted, style, error_rate, seed, key=video_id)
    if JOINT_ID in prompt_ids:
        answers[JOINT_ID] = format_joint(answers)
    return answers, time.perf_counter() - start
