"""`fourtier plan`: sizes follow from the backbone and the datasets; a cache larger than the disk is flagged."""
import shutil
from collections import namedtuple

import yaml

from fourtier.params import parse_params
from fourtier.plan import plan
from helpers import REPO


def params(**changes):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(changes)
    return parse_params(raw)


def test_plan_sizes_m_from_the_backbone_and_warns_when_the_disk_is_too_small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing downloaded here: clip counts come from params
    text = plan(params(), REPO)
    assert "16.0 KB per clip" in text  # tiny: 2 views x 4 x 4 x 4 x 64 x 2 bytes (8 frames, tubelet 2)
    assert "| synth-pretrain | pretrain | 600 (params) |" in text and "WARNING" not in text
    big = plan(params(pretrain=["k710"], backbone="videomae"), REPO)
    assert "4.6 MB per clip" in big and "660,000 (approx.)" in big
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 12, 0, 10 ** 12))
    assert "WARNING: the m cache (2.9 TB) does not fit on the free disk" in plan(params(pretrain=["k710"], backbone="videomae"), REPO)


def test_plan_with_features_not_cached_needs_no_m_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["features"]["cache"] = False
    text = plan(parse_params(raw), REPO)
    assert "not cached" in text and "m cache in all: 0 B" in text


def test_plan_reads_a_local_models_shape_from_its_config(tmp_path, monkeypatch):
    """A hub architecture given as a local folder is sized from its own config, not guessed from its name."""
    from transformers import VideoMAEConfig, VideoMAEModel

    monkeypatch.chdir(tmp_path)
    VideoMAEModel(VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=16,
                                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained("mae")
    text = plan(params(backbone=str(tmp_path / "mae")), REPO)
    assert "(2, 2, 2, 16)" in text and "(videomae)" in text  # 4 frames / tubelet 2, 32 / 16 px, 16 channels
    assert "512 B per clip" in text  # 2 views x (2 x 2 x 2 x 16) x 2 bytes


def test_plan_takes_the_world_size_into_account(tmp_path, monkeypatch):
    """With 2 nodes x 8 GPUs the GPU times of the stages that split their work are divided by 16, and the plan
    says that this is ideal scaling, not a measurement."""
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(pretrain=["k710"], backbone="videomae")
    one = plan(parse_params(raw), REPO)
    raw["runtime"].update(nproc_per_node=8, nnodes=2, launcher="srun")
    many = plan(parse_params(raw), REPO)
    assert "16 x H100" not in one and "runtime: 16 processes (2 nodes x 8)" in many
    row = next(line for line in many.splitlines() if line.startswith("| features |"))
    one_gpu, sixteen = row.split(" | ")[2:4]
    hours = lambda cell: float(cell.split(" h")[0]) if " h" in cell else float(cell.split(" min")[0]) / 60
    assert abs(hours(one_gpu) / hours(sixteen.rstrip(" |")) - 16) < 16 * 0.1, row
