"""The feature cache: streamed, sharded, resumable after a kill with the same bytes; the on-the-fly path gives
the same numbers; devices and bad inputs give clear errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fourtier.config.base import OptimSettings
from fourtier.data.contract import Annotation, write_dataset
from fourtier.data.shards import ShardedArray
from fourtier.errors import DataError, ParamsError
from fourtier.features.cache import compute_features
from fourtier.features.source import FeatureSource, OnTheFlyFeatures, open_features
from fourtier.models.backbone import TinyVideoViT, load_backbone, save_tiny
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.runtime.hardware import resolve_device
from fourtier.train.align import train_alignment
from helpers import index_frames, write_video

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """6 clips of different sizes and lengths; v4 is not a video (skipped with its reason)."""
    root = tmp_path_factory.mktemp("ds")
    (root / "videos").mkdir()
    rows = []
    for i in range(6):
        path = root / "videos" / f"v{i}.mp4"
        if i == 4:
            path.write_bytes(b"not a video")
        else:
            write_video(path, index_frames(12 + 3 * i, 48, 64 + 16 * i))
        rows.append(Annotation(f"v{i}", f"videos/v{i}.mp4", "ab"[i % 2], "train" if i < 4 else "val"))
    write_dataset(root, rows, ["a", "b"], {"kind": "test"}, [])
    return root


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("backbone")
    save_tiny(TinyVideoViT(frames=4, size=32, dim=16, depth=1, heads=2, head_sizes=(2,)), out, {})
    return out


@pytest.fixture(scope="module")
def backbone(backbone_dir):
    return load_backbone(backbone_dir)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_cache_and_on_the_fly_give_the_same_numbers(dataset, backbone, tmp_path):
    meta = compute_features(backbone, dataset, tmp_path / "features", 2, 1, batch_size=3, workers=0)
    assert meta["shape"] == [5, 2, 4, 2, 2, 16] and meta["classes"] == ["a", "b"]
    assert [s["video_id"] for s in meta["skipped"]] == ["v4"] and meta["skipped"][0]["reason"]
    cached = FeatureSource(tmp_path / "features")
    live = OnTheFlyFeatures(dataset, backbone, 2, 1)
    assert cached.videos == ["v0", "v1", "v2", "v3", "v5"]
    assert (cached.n_views, cached.grid, cached.dim) == (live.n_views, live.grid, live.dim)
    assert cached.labels.tolist() == [0, 1, 0, 1, 1]
    # cached position 4 is v5 (v4 was skipped): the on-the-fly source still lists v4 at position 4
    idx, views = np.array([0, 2, 3, 4]), np.array([1, 0, 1, 1])
    assert torch.allclose(cached.get(idx, views), live.get(np.array([0, 2, 3, 5]), views), atol=1e-3)
    assert cached.split("val").tolist() == [4]
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())  # the work folder became the output


def test_shards_workers_and_batches_do_not_change_the_bytes(dataset, backbone, tmp_path):
    compute_features(backbone, dataset, tmp_path / "one", 2, 1, batch_size=2, workers=0)
    # 1 MB shards hold 2**20 / 1024 bytes-per-view = 1024 views: force several with a tiny row budget instead
    import fourtier.features.cache as features  # what compute_features calls

    compute_features(backbone, dataset, tmp_path / "two", 2, 1, batch_size=2, workers=2)
    assert files(tmp_path / "one") == files(tmp_path / "two")
    original = features.rows_per_shard
    features.rows_per_shard = lambda row_bytes, shard_mb: 3  # 3 views per shard: 12 rows in 4 shards
    try:
        compute_features(backbone, dataset, tmp_path / "sharded", 2, 1, batch_size=2, workers=0)
    finally:
        features.rows_per_shard = original
    assert sorted(p.name for p in (tmp_path / "sharded").glob("m-*.npy")) == [f"m-0000{k}.npy" for k in range(4)]
    whole, sharded = FeatureSource(tmp_path / "one"), FeatureSource(tmp_path / "sharded")
    idx, views = np.array([4, 0, 3, 3, 1]), np.array([0, 1, 1, 0, 0])
    assert torch.equal(whole.get(idx, views), sharded.get(idx, views))
    # each shard is a plain .npy a user can open
    assert np.load(tmp_path / "sharded" / "m-00001.npy", mmap_mode="r").shape == (3, 4, 2, 2, 16)


KILLABLE = """
import sys, time
from pathlib import Path
import fourtier.features.cache as f
from fourtier.models.backbone import load_backbone
slow = f.frames_to_m
def frames_to_m(*args):
    time.sleep(0.4)  # slow enough to be killed part-way
    return slow(*args)
f.frames_to_m = frames_to_m
f.compute_features(load_backbone(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]), 2, 1, 1, 0)
"""


def test_a_killed_run_resumes_and_writes_the_same_bytes(dataset, backbone, backbone_dir, tmp_path):
    compute_features(backbone, dataset, tmp_path / "whole", 2, 1, batch_size=1, workers=0)
    out = tmp_path / "killed"
    progress = tmp_path / ".killed.partial" / "progress-0.json"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(backbone_dir), str(dataset), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text())["done"] >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = json.loads(progress.read_text())["done"]
    assert 2 <= done_before < 6 and not out.exists()
    meta = compute_features(backbone, dataset, out, 2, 1, batch_size=1, workers=0)
    assert meta["shape"][0] == 5
    assert files(out) == files(tmp_path / "whole")
    assert not progress.parent.exists()


def test_a_resume_with_other_settings_starts_over(dataset, backbone, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        compute_features(backbone, dataset, tmp_path / "f", 1, 1, batch_size=2, workers=0, stop_after=1)
    compute_features(backbone, dataset, tmp_path / "f", 2, 1, batch_size=2, workers=0)  # other views: new key
    compute_features(backbone, dataset, tmp_path / "g", 2, 1, batch_size=2, workers=0)
    assert files(tmp_path / "f") == files(tmp_path / "g")


def test_index_only_when_not_cached_and_the_on_the_fly_source_reads_it(dataset, backbone, backbone_dir, tmp_path):
    compute_features(backbone, dataset, tmp_path / "cached", 2, 1, batch_size=4, workers=0)
    meta = compute_features(backbone, dataset, tmp_path / "index", 2, 1, batch_size=4, workers=0, cache=False)
    assert meta["cache"] is False and not list((tmp_path / "index").glob("m-*.npy"))
    live = open_features(tmp_path / "index", dataset, backbone_dir, CPU)
    cached = open_features(tmp_path / "cached", dataset, backbone_dir, CPU)
    assert isinstance(live, OnTheFlyFeatures) and live.videos == cached.videos
    idx, views = np.array([4, 1]), np.array([0, 1])
    assert torch.allclose(live.get(idx, views), cached.get(idx, views), atol=1e-3)
    with pytest.raises(DataError, match="features.cache: false"):
        FeatureSource(tmp_path / "index")


def test_sharded_array_reads_what_it_wrote_in_any_order(tmp_path):
    store = ShardedArray(tmp_path, "x", 10, (2, 3), np.float16, per_shard=4)
    store.create()
    rows = np.arange(60, dtype=np.float16).reshape(10, 2, 3)
    store.write(0, rows[:5])
    store.write(5, rows[5:])
    store.close()
    reader = ShardedArray.open(tmp_path, "x")
    assert np.array_equal(reader.read([9, 0, 4, 4, 3]), rows[[9, 0, 4, 4, 3]])
    assert [np.load(reader.path(k)).shape[0] for k in range(3)] == [4, 4, 2]
    with pytest.raises(IndexError):
        reader.read([10])


def test_missing_features_and_empty_split_are_clear_errors(dataset, backbone, tmp_path):
    with pytest.raises(DataError, match="has no features: run the features stage first"):
        FeatureSource(tmp_path / "nothing")
    compute_features(backbone, dataset, tmp_path / "f", 1, 1, batch_size=4, workers=0)
    with pytest.raises(DataError, match=r"no clips in split 'test' \(splits present: \['train', 'val'\]\)"):
        FeatureSource(tmp_path / "f").split("test")


def test_text_dim_mismatch_is_a_clear_error(dataset, backbone, tmp_path):
    compute_features(backbone, dataset, tmp_path / "f", 1, 1, batch_size=4, workers=0)
    source = FeatureSource(tmp_path / "f")
    model = FTP(FTPConfig(source.dim, source.grid, ["A"], n_classes=1, text_dim=384))
    pooled = np.zeros((5, 4, 512), np.float16)
    with pytest.raises(DataError, match="text embeddings are 512-d but the alignment heads expect 384-d"):
        train_alignment(model, source, np.arange(3), np.arange(3, 5), pooled, OptimSettings(1, 2, 1e-3, 0, (0.9, 0.95), 0), 0)


def test_devices():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else CPU)
    with pytest.raises(ParamsError, match="runtime.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="torch sees no GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_features_on_the_gpu_match_the_cpu(dataset, backbone, tmp_path):
    compute_features(backbone, dataset, tmp_path / "cpu", 2, 1, batch_size=4, workers=0, device=CPU)
    compute_features(backbone, dataset, tmp_path / "gpu", 2, 1, batch_size=4, workers=2, device=torch.device("cuda"))
    cpu, gpu = FeatureSource(tmp_path / "cpu"), FeatureSource(tmp_path / "gpu")
    assert gpu.meta["device"] == "cuda"
    idx = np.arange(len(cpu))
    # bf16 autocast: close, not equal
    assert torch.allclose(cpu.get(idx, 0), gpu.get(idx, 0), atol=0.1, rtol=0.05)


def test_loader_workers_feed_training_the_same_batches(dataset, backbone, tmp_path):
    from fourtier.train.finetune import train_classifier

    compute_features(backbone, dataset, tmp_path / "f", 2, 1, batch_size=4, workers=0)
    source = FeatureSource(tmp_path / "f")
    states = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = FTP(FTPConfig(source.dim, source.grid, [], n_classes=2))
        train_classifier(model, source, source.split("train"), source.labels, OptimSettings(2, 2, 1e-3, 0.05, (0.9, 0.999), 0),
                         seed=0, label_smoothing=0.1, mixup_alpha=0.8, mixup_prob=0.5, workers=workers)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


RANKED = """
import os, sys, time
from pathlib import Path
import torch
from fourtier.runtime import distributed
import fourtier.features.cache as f
from fourtier.models.backbone import load_backbone
distributed.setup(torch.device("cpu"))
if sys.argv[4] == "slow":  # slow enough to be killed part-way; says which process is which rank
    slow = f.frames_to_m
    def frames_to_m(*args):
        time.sleep(0.4)
        return slow(*args)
    f.frames_to_m = frames_to_m
    Path(sys.argv[3] + f".pid{distributed.rank()}").write_text(str(os.getpid()))
f.compute_features(load_backbone(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]), 2, 1, 1, 0)
distributed.teardown()
"""


def test_two_ranks_write_the_bytes_of_one_and_survive_a_killed_rank(dataset, backbone, backbone_dir, tmp_path):
    """Rank r of 2 takes every other batch: the cache is byte for byte one process's. One rank SIGKILLed
    part-way takes the run down (torchrun stops the other); a re-run, here on one process, resumes."""
    script = tmp_path / "ranked.py"
    script.write_text(RANKED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=0",
                str(script), str(backbone_dir), str(dataset)]
    compute_features(backbone, dataset, tmp_path / "whole", 2, 1, batch_size=1, workers=0)
    done = subprocess.run([*torchrun, str(tmp_path / "two"), "fast"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert files(tmp_path / "two") == files(tmp_path / "whole")

    out = tmp_path / "killed"
    work = tmp_path / ".killed.partial"
    proc = subprocess.Popen([*torchrun, str(out), "slow"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # both ranks have finished a batch
        states = [json.loads(p.read_text()) for p in work.glob("progress-*.json")] if work.exists() else []
        if len(states) == 2 and all(state["done"] >= 1 for state in states):
            break
        time.sleep(0.05)
    os.kill(int(Path(f"{out}.pid1").read_text()), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert not out.exists()
    done_before = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["done"] for p in work.glob("progress-*.json")}
    assert min(done_before.values()) >= 1 and sum(done_before.values()) < 6
    meta = compute_features(backbone, dataset, out, 2, 1, batch_size=1, workers=0)
    assert meta["shape"][0] == 5 and len(meta["skipped"]) == 1
    assert files(out) == files(tmp_path / "whole")
    assert not work.exists()
