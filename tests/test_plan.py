"""`fourtier plan`: sizes follow from the backbone and the datasets; files per output from the shard settings (and
agree with the writers); the DVC cache's link type as DVC picks it; the captioning bill without an API key; time at
the configured world size. Outputs larger than the disk and outputs of too many files are flagged."""
import json
import math
import os
import re
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import yaml

from fourtier.config.base import parse_params
from fourtier.runtime.plan import CacheLink, _disk_lines, dvc_cache_link, plan, sharded_files
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
    text = plan(params(pretrain=["k710"], backbone="videomae"), REPO)
    assert "m cache in all: 2.9 TB" in text and "do not fit on the free disk (931.3 GB)" in text  # 10^12 B


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


def raw_params(**changes) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(changes)
    return raw


def table_row(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_plan_counts_the_files_dvc_tracks_from_the_shard_settings(tmp_path, monkeypatch):
    """12,000 clips above download/tile.shard_above 5,000 are ceil(12000 / 1000) shards; m in shards of 1 MB."""
    monkeypatch.chdir(tmp_path)
    raw = raw_params()
    raw["datasets"]["synth-pretrain"]["clips"] = 12_000
    raw["features"]["shard_mb"] = 1
    text = plan(parse_params(raw), REPO)
    assert table_row(text, "data/raw/synth-pretrain")[1] == f"{math.ceil(12_000 / 1000) + 4:,}"  # + 4 index files
    assert table_row(text, "data/tiles/synth-pretrain")[1] == f"{math.ceil(12_000 / 1000) + 2:,}"
    m_bytes = 12_000 * 2 * (4 * 4 * 4 * 64) * 2  # clips x views x tiny's m per view x float16
    assert table_row(text, "data/features/synth-pretrain")[1] == f"{math.ceil(m_bytes / 2 ** 20) + 6:,}"
    assert table_row(text, "data/raw/synth-scenes")[1] == f"{10 * 75 + 4:,}"  # 750 clips, below shard_above: files
    assert table_row(text, "data/embeddings/synth-pretrain")[1] == "5" and "WARNING: data/" not in text

    raw["datasets"]["synth-pretrain"]["clips"] = 120_000
    raw["download"]["shard_above"] = 1_000_000  # one file per video: 120,004 files
    raw["tile"]["shard_size"] = 1  # sharded, but one tile per shard: 120,002 files
    text = plan(parse_params(raw), REPO)
    assert ("WARNING: data/raw/synth-pretrain would be 120,004 files, over 100,000: lower download.shard_above "
            "(now 1,000,000) below 120,000") in text
    assert "WARNING: data/tiles/synth-pretrain would be 120,002 files, over 100,000: raise tile.shard_size (now 1)" in text


def test_the_planned_file_counts_are_what_the_writers_write(tmp_path):
    """store.ItemWriter (tiles, sharded videos) and shards.ShardedArray (m) write the files plan counts."""
    from fourtier.data.shards import ShardedArray, rows_per_shard
    from fourtier.data.store import ItemWriter

    for items, above in ((12, 5), (5, 5)):
        out = tmp_path / f"items-{items}-{above}"
        with ItemWriter(out, items, shard_above=above, shard_size=4) as writer:
            for i in range(items):
                writer.put(f"{i}.jpg", b"x")
        assert sum(1 for p in out.rglob("*") if p.is_file()) == sharded_files(items, above, 4)
    rows, row_shape = 1000, (4, 4, 4, 64)
    store = ShardedArray(tmp_path / "m", "m", rows, row_shape, np.float16, rows_per_shard(int(np.prod(row_shape)) * 2, 1))
    store.create()
    shards = sum(1 for p in (tmp_path / "m").glob("m-*.npy"))
    assert shards == math.ceil(rows * int(np.prod(row_shape)) * 2 / 2 ** 20)  # what plan counts for 1 MB shards


def dvc_repo(path: Path, cache_type: str, cache_dir: str = "") -> Path:
    from dvc.repo import Repo

    repo = Repo.init(str(path), no_scm=True)
    with repo.config.edit() as conf:
        conf["cache"]["type"] = cache_type
        if cache_dir:
            conf["cache"]["dir"] = cache_dir
    repo.close()
    return path


def links_here(a: Path, b: Path) -> list[str]:
    """Which of reflink and hardlink work from folder a to folder b, tried with cp and os.link (not DVC's test)."""
    (a / "probe").write_bytes(b"probe")
    works = []
    if subprocess.run(["cp", "--reflink=always", a / "probe", b / "reflinked"], capture_output=True).returncode == 0:
        works.append("reflink")
    try:
        os.link(a / "probe", b / "hardlinked")
        works.append("hardlink")
    except OSError:
        pass
    for p in (a / "probe", b / "reflinked", b / "hardlinked"):
        p.unlink(missing_ok=True)
    return works


def test_the_dvc_link_type_is_the_first_configured_one_that_works_here(tmp_path):
    repo = dvc_repo(tmp_path / "copy", "copy")
    link = dvc_cache_link(repo)
    assert link.configured == ("copy",) and link.used == "copy" and link.copies == 2 and link.same_filesystem
    repo = dvc_repo(tmp_path / "links", "hardlink,symlink,copy")
    link = dvc_cache_link(repo)
    assert link.used == ([t for t in links_here(repo / ".dvc", repo) if t == "hardlink"] + ["symlink"])[0]
    assert link.copies == 1
    assert not (repo / ".dvc" / "cache").exists() and not (repo / "data").exists()  # the probe creates nothing
    assert sorted(p.name for p in repo.iterdir()) == [".dvc", ".dvcignore"]  # and leaves nothing behind
    # reflink first: DVC leaves a run's outputs as copies where reflinks do not work (DVC issue 10549)
    link = dvc_cache_link(dvc_repo(tmp_path / "reflink-first", "reflink,hardlink,symlink,copy"))
    reflinks = "reflink" in links_here(tmp_path / "reflink-first" / ".dvc", tmp_path / "reflink-first")
    assert (link.used, link.copies) == (("reflink", 1) if reflinks else ("copy", 2))
    unset = dvc_repo(tmp_path / "unset", "copy")
    (unset / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    assert dvc_cache_link(unset).configured == ("reflink", "copy")  # DVC's default
    assert dvc_cache_link(tmp_path) is None  # no DVC repository


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second filesystem (/dev/shm)")
def test_a_cache_on_another_filesystem_can_only_be_symlinked_or_copied(tmp_path):
    shm = Path("/dev/shm") / f"fourtier-plan-{os.getpid()}"
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the tests' temporary folder")
    try:
        shm.mkdir()
        link = dvc_cache_link(dvc_repo(tmp_path / "repo", "hardlink,symlink,copy", str(shm / "cache")))
        assert link.used == "symlink" and not link.same_filesystem and link.copies == 1
        assert dvc_cache_link(dvc_repo(tmp_path / "repo2", "hardlink", str(shm / "cache"))).used == ""
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_the_disk_warning_counts_the_outputs_twice_with_copy(tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 9, 0, 150 * 2 ** 20))
    copy = CacheLink(("copy",), ("hardlink", "symlink"), "copy", tmp_path / ".dvc" / "cache", True)
    hardlink = CacheLink(("hardlink", "symlink", "copy"), ("hardlink", "symlink"), "hardlink", tmp_path / ".dvc" / "cache", True)
    total = 100 * 2 ** 20
    text = "\n".join(_disk_lines(copy, tmp_path, total, total, 0))
    assert "on disk with the cache: 200.0 MB" in text
    assert "WARNING: the outputs (100.0 MB x 2 with cache.type copy) do not fit on the free disk (150.0 MB)" in text
    assert "dvc config cache.type hardlink,symlink,copy" in text  # the fix that applies
    text = "\n".join(_disk_lines(hardlink, tmp_path, total, total, 0))
    assert "DVC will use hardlink" in text and "on disk with the cache: 100.0 MB" in text and "WARNING" not in text
    none = CacheLink(("hardlink",), (), "", tmp_path / "elsewhere", False)
    assert "WARNING: none of cache.type hardlink works" in "\n".join(_disk_lines(none, tmp_path, total, total, 0))


def caption_row(text: str, dataset: str) -> list[str]:
    return table_row(text.split("Captioning with", 1)[1], dataset)


def test_the_captioning_bill_of_an_openai_preset_needs_no_api_key(tmp_path, monkeypatch):
    """Requests, tokens and price from OpenAI's published rule (85 tokens per image at detail low; 85 + 170 per
    512-px square at high) and the estimate's prompt tokens (len // 4 + 10), computed here by hand."""
    from fourtier.caption.joint import joint_prompt

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    raw = raw_params(vlm="gpt-4o")
    raw["datasets"]["synth-pretrain"]["clips"] = 1000
    prompts = raw["caption"]["prompts"]
    text = plan(parse_params(raw), REPO)
    tokens_in = 1000 * sum(85 + len(p) // 4 + 10 for p in prompts.values())
    tokens_out = 1000 * 4 * raw["caption"]["max_new_tokens"]
    price = tokens_in * 2.5 / 1e6 + tokens_out * 10.0 / 1e6  # the preset's prices per million tokens
    assert caption_row(text, "synth-pretrain")[2:] == ["4,000", f"{tokens_in:,}", f"{tokens_out:,}", f"{price:,.2f}"]
    assert f"${price:,.2f} in all" in text

    raw["vlms"]["gpt-4o"].update(joint=True, detail="high")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-plan-secret-0123456789")
    text = plan(parse_params(raw), REPO)
    width = 5 * round(128 * 160 / 96)  # K panels of the widest SynthAct clip (160 x 96) at 128 px high
    image = 85 + 170 * math.ceil(width / 512) * math.ceil(128 / 512)
    tokens_in = 1000 * (image + len(joint_prompt(prompts)) // 4 + 10)
    tokens_out = 1000 * 4 * raw["caption"]["max_new_tokens"]  # one reply of four answers per tile
    assert caption_row(text, "synth-pretrain")[1:4] == [f"{width} x 128", "1,000", f"{tokens_in:,}"]
    assert caption_row(text, "synth-pretrain")[4] == f"{tokens_out:,}" and "sk-plan-secret" not in text


def test_the_captioning_bill_of_local_vlms_has_no_price_and_a_bad_preset_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = plan(params(), REPO)
    assert "Captioning with vlm builtin (builtin): 600 tiles, 4 prompts per tile, 2,400 requests" in text
    assert "no per-token price" in text
    text = plan(params(vlm="blip2"), REPO)
    assert "2,400 requests" in text and f"{2400 * 200:,} in all" in text and "no per-token price" in text
    raw = raw_params(vlm="broken")
    raw["vlms"]["broken"] = {"type": "openai"}
    text = plan(parse_params(raw), REPO)
    assert "- no estimate: vlms.broken needs a 'model'" in text


def test_the_gpu_column_uses_a_measured_speed_up_where_world_size_jsonl_has_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "root" / "benchmarks" / "results"
    results.mkdir(parents=True)
    for name in ("scale.jsonl", "gpu_h100.jsonl"):
        shutil.copy(REPO / "benchmarks" / "results" / name, results / name)
    rows = [{"stage": "features", "nproc": n, "device": "cuda", "per_s": rate} for n, rate in ((1, 100.0), (8, 600.0))]
    (results / "world_size.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = raw_params(pretrain=["k710"], backbone="videomae")
    raw["runtime"].update(nproc_per_node=8)
    text = plan(parse_params(raw), tmp_path / "root")
    hours = lambda cell: float(cell.split(" h")[0]) if " h" in cell else float(cell.split(" min")[0]) / 60
    features, align = table_row(text, "features"), table_row(text, "align (one epoch)")
    assert features[3].endswith("(measured)") and abs(hours(features[2]) / hours(features[3]) - 6) < 0.6  # 600 / 100
    assert not align[3].endswith("(measured)") and abs(hours(align[2]) / hours(align[3]) - 8) < 0.8  # ideal
