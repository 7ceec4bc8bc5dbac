"""Joint mode (`joint: true` in a vlms preset): the four prompts in one request per tile, one reply
parsed into four answers. The paper asks four separate questions, which stays the default; joint sends the
image once instead of four times. A reply that does not parse is asked again as four separate requests
(fourtier.caption.runner)."""
from __future__ import annotations

import re

from fourtier.config.base import PROMPT_IDS


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
