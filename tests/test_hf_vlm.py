"""The hf backend for real, on a tiny LLaVA and a tiny Qwen2-VL built offline; and `transformers serve` behind the
openai backend."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fourtier.caption.backend import VLMError, make_backend
from fourtier.config.base import PROMPT_IDS
from test_openai_backend import requests_for
from tiny_vlm import SENTENCES, build_tiny_llava, transformers_serve

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


QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_qwen2_vl(out_dir: Path, seed: int = 0) -> Path:
    """A random tiny Qwen2-VL laid out as the hub's Qwen/Qwen2-VL-2B-Instruct is: config and weights, tokenizer
    files, preprocessor_config.json naming Qwen2VLProcessor, chat_template.json; no video processor config, so
    AutoProcessor builds Qwen2VLVideoProcessor, which needs torchvision."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessorPil)

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(SENTENCES * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<unk>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    config = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    with torch.no_grad():  # as the tiny LLaVA: large weights make answers depend on the image
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(out_dir)
    preprocessor = json.loads((out_dir / "preprocessor_config.json").read_text())
    preprocessor.update(image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2VLProcessor")
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE}))
    return out_dir


@pytest.fixture(scope="module")
def tiny_qwen2_vl(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def test_qwen2_vl_captions_without_torchvision(tiny_qwen2_vl):
    backend = make_backend(f"hf:{tiny_qwen2_vl}", {}, GEN)
    records = collect(backend, requests_for(3))
    assert len(records) == 12 and all(r.ok for r in records.values()), records
    assert all(r.input_tokens > 0 and 0 < r.output_tokens <= 6 for r in records.values())
    assert backend.prompt_text("Describe the context information").startswith("<|im_start|>user\n<|vision_start|>")
    assert len({records[(f"v{i}", "A")].answer for i in range(3)}) > 1  # the image reaches the model
    if not has_torchvision():  # tiles are images: the processor was built without its video processor
        assert getattr(backend._processor, "video_processor", None) is None
        assert type(backend._processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"


@pytest.mark.skipif(has_torchvision(), reason="torchvision is installed: AutoProcessor loads the video processor")
def test_a_processor_that_cannot_do_without_torchvision_names_it(tiny_qwen2_vl, monkeypatch):
    import fourtier.caption.hf_backend as hf

    monkeypatch.setattr(hf, "image_only_processor_class", lambda model_id, local_only: None)
    with pytest.raises(VLMError) as err:
        collect(make_backend(f"hf:{tiny_qwen2_vl}", {}, GEN), requests_for(1))
    message = str(err.value)
    assert message.startswith(f"vlm 'hf:{tiny_qwen2_vl}': cannot load '{tiny_qwen2_vl}'")
    assert "the Python package 'torchvision', which is not installed" in message
    assert "install the torchvision build that matches torch" in message and "vlm=builtin" in message


@pytest.mark.parametrize("raised, expected", [
    (ImportError("LlavaProcessor requires the protobuf library but it was not found in your environment."),
     "needs the Python package 'protobuf', which is not installed"),
    (ModuleNotFoundError("No module named 'num2words'", name="num2words"), "pip install num2words"),
    (KeyError("vision_config"), "from that folder: 'vision_config'"),
    (RuntimeError("size mismatch for weight"), "from that folder: size mismatch for weight"),
])
def test_any_load_error_is_a_clear_error(tiny_llava, monkeypatch, raised, expected):
    import transformers

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fail)
    with pytest.raises(VLMError, match=r"cannot load '.*'") as err:
        collect(make_backend(str(tiny_llava), {}, GEN), requests_for(1))
    assert expected in str(err.value) and "vlm=builtin" in str(err.value)


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


def test_the_caption_stage_on_two_ranks_writes_one_processs_captions_and_one_cache(tiny_llava, tmp_path):
    """An hf VLM with runtime.nproc_per_node: 2: the stage re-launches under torchrun, each rank generates its
    share of the backend's batches into a private cache, rank 0 gathers every answer into the one answer
    cache and writes the file one process writes. A second run on 2 ranks asks nothing."""
    import os
    import subprocess
    import sys

    import yaml

    from helpers import REPO
    from test_caption_stage import make_project

    def project(root, nproc):
        root.mkdir()
        make_project(root, "http://127.0.0.1:9")  # tiles and params; the openai preset is not used
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["vlms"]["tiny"] = {"type": "hf", "model": str(tiny_llava), "batch_size": 2, "offline": True}
        raw["vlm"] = "tiny"
        raw["caption"]["max_new_tokens"] = 8
        raw["runtime"].update(nproc_per_node=nproc, workers=2)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        return root

    def caption(root):
        env = {**os.environ, "FOURTIER_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, str(REPO / "stages/caption.py"), "synth-pretrain"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    one = project(tmp_path / "one", 1)
    caption(one)
    two = project(tmp_path / "two", 2)
    out = caption(two)
    assert "caption synth-pretrain: 2 processes (1 node x 2) through torchrun" in out
    assert "24 answers (0 from cache, 24 asked now" in out
    path = "data/captions/synth-pretrain/captions.jsonl"
    assert (two / path).read_bytes() == (one / path).read_bytes()
    assert "24 answers (24 from cache, 0 asked now" in caption(two)
    assert not (two / "cache" / "answers-ranks" / "synth-pretrain").exists() or \
        not any((two / "cache" / "answers-ranks").iterdir())
