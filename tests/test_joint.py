"""Joint mode (`joint: true` in a vlms preset): the four prompts in one request per tile, the reply parsed into
four answers, separate requests for a tile whose reply does not parse."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI
from fourtier.caption.backend import Request, VLMError, make_backend
from fourtier.caption.joint import JOINT_ID, format_joint, joint_prompt, parse_joint
from fourtier.caption.runner import AnswerCache, answer_key, joint_requests, run_captions, write_captions
from fourtier.config.base import PROMPT_IDS
from fourtier.data.synthact import plan, render

PROMPTS = {"A": "What is the action category?", "B": "Describe the action components in the image",
           "C": "Describe the action in the image in detail", "D": "Describe the context information"}
GEN = {"max_new_tokens": 32, "temperature": 0.0}


@pytest.mark.parametrize("reply, expected", [
    ("A: juggling\nB: a man, three balls\nC: He throws.\nThen catches.\nD: a park",
     {"A": "juggling", "B": "a man, three balls", "C": "He throws. Then catches.", "D": "a park"}),
    ("Sure, here they are.\n**A:** juggling\n**B:** a man\n\n**C:** throws\n**D:** park",
     {"A": "juggling", "B": "a man", "C": "throws", "D": "park"}),
    ("### A. juggling\n- B) a man\n(C) throws\nD: park", {"A": "juggling", "B": "a man", "C": "throws", "D": "park"}),
])
def test_replies_that_parse(reply, expected):
    assert parse_joint(reply) == expected


@pytest.mark.parametrize("reply", [
    "A: x\nB: y\nD: z",                 # a part missing
    "A: x\nB:\nC: y\nD: z",             # a part empty
    "A: x\nC: y\nB: z\nD: w",           # out of order
    "A: x\nB: y\nC: z\nD: w\nA: again",  # a part twice
    "A: x B: y C: z D: w",              # not at line starts
    "I cannot see the image.",
])
def test_replies_that_do_not_parse(reply):
    assert parse_joint(reply) is None


def test_the_joint_prompt_carries_every_prompt_verbatim_and_its_own_reply_format_parses():
    text = joint_prompt(PROMPTS)
    assert all(f"{pid}: {PROMPTS[pid]}" in text for pid in PROMPT_IDS)
    assert parse_joint(format_joint(PROMPTS)) == PROMPTS


def tile_requests(n_tiles, settings):
    """Four per-prompt requests for each of n synthetic tiles (a SynthAct clip's K=5 keyframes side by side)."""
    out = []
    for v in range(n_tiles):
        buf = io.BytesIO()
        frames = render(plan("pretrain", 0, 8, 0.0, 0, 0)[v])
        Image.fromarray(np.concatenate(list(frames[np.linspace(0, len(frames) - 1, 5).astype(int)]), axis=1)).save(
            buf, format="JPEG")
        for pid in PROMPT_IDS:
            out.append(Request(f"v{v}", pid, PROMPTS[pid], buf.getvalue(), 5,
                               answer_key(buf.getvalue(), PROMPTS[pid], "m", settings)))
    return out


def test_builtin_joint_gives_the_separate_answers_in_a_quarter_of_the_requests(tmp_path):
    separate = make_backend("builtin", {"builtin": {"type": "builtin"}}, GEN)
    joint = make_backend("builtin-joint", {"builtin-joint": {"type": "builtin", "joint": True}}, GEN)
    assert joint.joint and joint.settings["joint"] is True and "joint" not in separate.settings
    answers = {}
    for name, backend in (("separate", separate), ("joint", joint)):
        cache = AnswerCache(tmp_path / f"{name}.sqlite")
        requests = tile_requests(3, backend.settings)
        stats = run_captions(backend, requests, cache, 0.0)
        totals = write_captions(tmp_path / name, requests, cache, name, backend.model_id, backend.settings)
        records = cache.get_many([r.key for r in requests])
        answers[name] = [records[r.key]["answer"] for r in requests]
        if name == "joint":
            assert stats["joint_requests"] == 3 and stats["joint_parsed"] == 3
            assert totals["joint_parsed"] == 12 and totals["joint_fallback"] == 0
    assert answers["joint"] == answers["separate"] and all(answers["joint"])


def good_or_bad(key, prompt):
    """A separate answer to a separate prompt; a well-formed joint reply to a joint prompt, except for one tile."""
    if not prompt.startswith("Answer each"):
        return f"separate answer to: {prompt}"
    if key == BAD["key"]:
        return "I am not sure what is shown."
    return format_joint({pid: f"joint answer {pid} for {key}" for pid in PROMPT_IDS})


BAD = {}


def test_openai_joint_asks_once_per_tile_and_falls_back_to_separate_requests(tmp_path):
    requests = tile_requests(4, {"joint": True})
    asked, by_video = joint_requests(requests)
    assert [r.prompt_id for r in asked] == [JOINT_ID] * 4 and list(by_video) == ["v0", "v1", "v2", "v3"]
    with FakeOpenAI(reply=good_or_bad) as server:
        BAD["key"] = FakeOpenAI.key_of({"messages": [{"content": [
            {"type": "text", "text": asked[2].prompt},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(
                asked[2].tile_jpeg).decode()}}]}]})
        preset = {"type": "openai", "model": "m", "base_url": server.base_url, "joint": True, "timeout": 5}
        backend = make_backend("local", {"local": preset}, GEN)
        assert backend.max_tokens == 4 * GEN["max_new_tokens"]  # one reply carries four answers
        cache = AnswerCache(tmp_path / "answers.sqlite")
        stats = run_captions(backend, requests, cache, 0.0)
        assert len(server.calls) == 4 + 4  # one per tile, then four separate requests for the tile that failed
        assert stats["joint_parsed"] == 3 and stats["called"] == 16
        totals = write_captions(tmp_path / "out", requests, cache, "local", "m", backend.settings)
        assert totals["joint_parsed"] == 12 and totals["joint_fallback"] == 4 and totals["answers"] == 16
        records = cache.get_many([r.key for r in requests])
        assert records[requests[8].key]["answer"] == f"separate answer to: {PROMPTS['A']}"  # v2's, asked alone
        assert records[requests[0].key]["answer"].startswith("joint answer A for")
        # a parsed request's 120 prompt tokens are shared out over its four answers; the tile whose reply did not
        # parse paid for that reply and for four separate requests, and all of it is counted
        assert sum(records[r.key]["input_tokens"] for r in requests[:4]) == 120
        assert sum(records[r.key]["input_tokens"] for r in requests[8:12]) == 5 * 120
        assert totals["input_tokens"] == 3 * 120 + 5 * 120
        again = run_captions(backend, requests, cache, 0.0)
        assert len(server.calls) == 8 and again["called"] == 0  # a re-run asks nothing


def test_joint_must_be_true_or_false():
    with pytest.raises(VLMError, match="vlms.x.joint is 'yes'; use true"):
        make_backend("x", {"x": {"type": "builtin", "joint": "yes"}}, GEN)
