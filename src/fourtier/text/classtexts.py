"""Texts that describe each class, one per prompt, for zero-shot recognition with stage 1's alignment heads.

Two kinds, as the zero-shot methods the paper's peers use:
- `template`: a sentence per prompt around the class name (Vita-CLIP's manual prompts): any dataset.
- `description`: a description per prompt written from the class's definition, offline (ALT builds these with
  an LLM). SynthAct ships them, written from its class definitions (shape, motion, scene) and never from a
  clip. For any dataset, `class_texts/<dataset>.json` in the repository, {class: {A: text, B: ..., C: ...,
  D: ...}}, takes precedence (the zeroshot stage depends on that folder, so editing a text re-runs it).
"""
from __future__ import annotations

import json
from pathlib import Path

from fourtier.config.base import PROMPT_IDS
from fourtier.errors import DataError

TEMPLATES = {  # what each of the paper's four prompts asks, around the class name
    "A": "{c}.",
    "B": "The action components of {c}.",
    "C": "A video of {c}.",
    "D": "The context in which {c} happens.",
}


def template_texts(classes: list[str]) -> dict[str, dict[str, str]]:
    return {c: {p: TEMPLATES[p].format(c=c) for p in PROMPT_IDS} for c in classes}


# SynthAct's class definitions (fourtier.data.synthact) in words: the motion families and actions as a
# describer would put them, the scenes as places
FAMILY_WORDS = {
    "translation": ("moving sideways", "moves across the frame from one side to the other"),
    "vertical": ("moving up and down", "moves up and down"),
    "size change": ("growing or shrinking", "changes size, growing or shrinking"),
    "rotation": ("spinning or circling", "turns, spinning in place or moving in a circle"),
}
ACTION_WORDS = {
    "slide left": ("moving to the left", "moves to the left across the frame"),
    "slide right": ("moving to the right", "moves to the right across the frame"),
    "rise": ("rising", "rises from the bottom towards the top"),
    "fall": ("falling", "falls from the top towards the bottom"),
    "bounce": ("bouncing", "bounces up and down several times"),
    "jump": ("jumping once", "jumps up once and lands again"),
    "grow": ("growing larger", "grows larger from frame to frame"),
    "shrink": ("shrinking", "shrinks from frame to frame"),
    "spin": ("spinning", "spins in place"),
    "orbit": ("moving in a circle", "moves in a circle around the centre"),
    "approach": ("approaching another object", "moves towards a second object"),
    "push": ("pushing another object", "reaches a second object and pushes it along"),
}
SCENE_WORDS = {
    "grass": "a grass field", "sand": "a sandy beach", "water": "open water", "snow": "a snowy slope",
    "road": "a road", "wooden floor": "a wooden floor", "night sky": "the night sky", "brick wall": "a brick wall",
}


def synthact_descriptions(variant: str) -> dict[str, dict[str, str]]:
    """Per class and prompt, from the class definition alone (shape, motion, scenes)."""
    from fourtier.data import synthact

    out = {}
    if variant == "scenes":
        for c, (shape, family, scenes) in synthact.SCENE_CLASSES.items():
            short, long = FAMILY_WORDS[family]
            where = " or ".join(SCENE_WORDS[s] for s in scenes)
            out[c] = {"A": f"A {shape} {short} on {where}.",
                      "B": f"Objects: a {shape}. The {shape} is {short}. Surface: {where}.",
                      "C": f"A {shape} {long} on {where}.",
                      "D": f"The scene is {where}."}
    elif variant == "motion":
        for c, action in synthact.MOTION_CLASSES.items():
            short, long = ACTION_WORDS[action]
            two = action in synthact.TWO_OBJECT_ACTIONS
            out[c] = {"A": f"An object {short}.",
                      "B": f"Objects: {'two objects' if two else 'an object'}. The object is {short}."
                           + (" Interaction: it " + ("pushes" if action == "push" else "moves towards")
                              + " the other object." if two else ""),
                      "C": f"An object {long}.",
                      "D": "The scene can be anywhere."}  # the action alone defines these classes
    else:
        raise DataError(f"SynthAct variant {variant!r} has no class descriptions (pretrain labels are not targets)")
    return out


def read_texts_file(path: Path, classes: list[str]) -> dict[str, dict[str, str]]:
    try:
        texts = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"class descriptions file {path}: {exc}") from None
    missing = [c for c in classes if not isinstance(texts.get(c), dict)
               or any(not str(texts[c].get(p, "")).strip() for p in PROMPT_IDS)]
    if missing:
        raise DataError(f"{path} must give a non-empty text for each of A, B, C, D for every class; "
                        f"missing or incomplete: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return {c: {p: str(texts[c][p]) for p in PROMPT_IDS} for c in classes}


def class_texts(kind: str, classes: list[str], spec=None, user_file: Path | None = None) -> dict[str, dict[str, str]]:
    """{class: {prompt id: text}} for every class: `template` (a sentence per prompt around the class name) or
    `description` (the user's file, else SynthAct's built-in ones)."""
    if kind == "template":
        return template_texts(classes)
    if user_file is not None and user_file.exists():
        return read_texts_file(user_file, classes)
    if spec is not None and spec.kind == "synthact" and spec.variant in ("scenes", "motion"):
        texts = synthact_descriptions(spec.variant)
        if sorted(texts) != sorted(classes):
            raise DataError(f"{spec.name}: classes.txt does not match SynthAct's {spec.variant} class list")
        return {c: texts[c] for c in classes}
    raise DataError(f"this dataset has no built-in class descriptions; to score description texts too, write "
                    f"{user_file} as JSON {{class: {{A: ..., B: ..., C: ..., D: ...}}}} (template texts are scored "
                    "either way)")
