import copy

import pytest
import yaml

from fourtier.errors import ParamsError
from fourtier.params import load_params, parse_params
from helpers import REPO

DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(**changes):
    raw = copy.deepcopy(DEFAULT)
    raw.update(changes)
    return raw


def test_default_params_load():
    p = load_params(REPO / "params.yaml")
    assert p.vlm == "builtin" and p.K == 5 and p.prompts == ("A", "B", "C", "D")
    assert p.pretrain == ("synth-pretrain",) and set(p.targets) == {"synth-scenes", "synth-motion"}
    assert p.dataset("synth-pretrain").clips >= 2000


@pytest.mark.parametrize("changes, expected", [
    ({"vlm": "gpt-9"}, ["'vlm'", "'gpt-9'", "builtin", "blip2"]),
    ({"backbone": "resnet"}, ["'backbone'", "'resnet'", "tiny", "videomae"]),
    ({"text_encoder": "bert"}, ["'text_encoder'", "'bert'", "minilm"]),
    ({"K": 0}, ["'K'", ">= 1", "0"]),
    ({"K": "five"}, ["'K'", "int", "'five'"]),
    ({"K": True}, ["'K'", "int", "True"]),
    ({"prompts": ["A", "E"]}, ["'prompts[1]'", "'E'", "A, B, C, D"]),
    ({"prompts": "A"}, ["'prompts'", "list", "'A'"]),
    ({"prompts": ["B", "B"]}, ["'prompts'", "twice"]),
    ({"targets": []}, ["'targets'", "empty", "synth-scenes"]),
    ({"pretrain": ["kinetics"]}, ["'pretrain[0]'", "'kinetics'", "synth-pretrain"]),
    ({"targets": ["synth-pretrain"]}, ["both", "synth-pretrain"]),
])
def test_bad_values_name_key_value_and_allowed(changes, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(with_change(**changes))
    for fragment in expected:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_bad_dataset_specs():
    raw = with_change()
    raw["datasets"]["synth-scenes"]["variant"] = "kinetics"
    with pytest.raises(ParamsError, match=r"datasets.synth-scenes.variant.*'kinetics'.*pretrain, scenes, motion"):
        parse_params(raw)
    raw = with_change()
    raw["datasets"]["synth-scenes"]["type"] = "youtube"
    with pytest.raises(ParamsError, match=r"datasets.synth-scenes.type.*'youtube'.*synthact, folder"):
        parse_params(raw)
    raw = with_change()
    raw["datasets"]["synth-motion"]["train_per_class"] = 0
    with pytest.raises(ParamsError, match=r"datasets.synth-motion.train_per_class.*>= 1"):
        parse_params(raw)
    raw = with_change()
    raw["datasets"]["my.set"] = {"type": "folder", "root": "/x", "csv": "a.csv"}
    with pytest.raises(ParamsError, match="only letters"):
        parse_params(raw)


def test_tile_section_checked():
    raw = with_change()
    raw["tile"]["jpeg_quality"] = 101
    with pytest.raises(ParamsError, match=r"tile.jpeg_quality.*1..100"):
        parse_params(raw)
    raw = with_change()
    del raw["tile"]["height"]
    with pytest.raises(ParamsError, match="missing key 'tile.height'"):
        parse_params(raw)


def test_hf_model_ids_are_accepted_as_selectors():
    assert parse_params(with_change(vlm="hf:org/some-vlm")).vlm == "hf:org/some-vlm"
