"""The hf backend for real, on a tiny LLaVA built offline; and `transformers serve` behind the openai backend."""
import shutil
import sys
from pathlib import Path

import pytest

from fourtier.vlm import PROMPT_IDS, VLMError, make_backend
from test_openai_backend import requests_for
from tiny_vlm import build_tiny_llava, transformers_serve

GEN = {"max_new_tokens": 6, "temperature": 0.0}


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def collect(backend, requests):
    records = {}
    backend.run(requests, lambda r, rec: records.__setitem__((r.video_id, r.prompt_id), rec))
    return records


def test_hf_backend_generates_batched_answers_from_a_local_directory(tiny_llava):
    backend = make_backend(str(tiny_llava), {}, GEN)  # a local directory works as a selector value
    assert type(backend).__name__ == "HFBackend"
    backend._load()
    assert backend.prompt_text("Describe the context information").startswith("USER: <image>")
    requests = requests_for(3)
    records = collect(backend, requests)
    assert len(records) == 12 and all(r.answer for r in records.values())
    assert all(r.input_tokens > 0 and 0 < r.output_tokens <= 6 for r in records.values())
    # batching changes nothing: the same request alone gives the same answer
    alone = collect(make_backend(f"hf:{tiny_llava}", {}, GEN), requests[:1])
    assert alone[("v0", "A")].answer == records[("v0", "A")].answer
    # answers depend on the image
    assert len({records[(f"v{i}", "A")].answer for i in range(3)}) > 1


def test_blip2_style_prompt_without_chat_template(tiny_llava, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_llava, plain)
    (plain / "chat_template.jinja").unlink()
    backend = make_backend("hf:" + str(plain), {}, GEN)
    backend._load()
    backend._processor.chat_template = None
    assert backend.prompt_text("What is the action category?") == "Question: What is the action category? Answer:"


def test_missing_model_is_a_clear_error():
    preset = {"type": "hf", "model": "Salesforce/blip2-opt-2.7b", "offline": True}
    backend = make_backend("blip2", {"blip2": preset}, GEN)
    with pytest.raises(VLMError, match=r"cannot load 'Salesforce/blip2-opt-2.7b'.*huggingface-cli download"):
        collect(backend, requests_for(1))


@pytest.fixture(scope="module")
def served(tiny_llava, tmp_path_factory):
    """`transformers serve` on 127.0.0.1 with the tiny model: a real OpenAI-compatible server."""
    if not (Path(sys.executable).parent / "transformers").exists():
        pytest.skip("transformers CLI not installed")
    with transformers_serve(tiny_llava, tmp_path_factory.mktemp("serve")) as url:
        yield url


def test_openai_backend_against_transformers_serve(served, tiny_llava):
    preset = {"type": "openai", "model": str(tiny_llava), "base_url": served, "concurrency": 2, "timeout": 60,
              "retry_base_delay": 0.2, "max_retries": 3}
    backend = make_backend("local", {"local": preset}, GEN)
    records = collect(backend, requests_for(2))
    assert len(records) == 8 and all(r.ok for r in records.values()), records
    assert {pid for _, pid in records} == set(PROMPT_IDS)
