"""The feature cache and the on-the-fly path give the same numbers; bad inputs give clear errors."""
import numpy as np
import pytest
import torch

from fourtier.data.contract import Annotation, write_dataset
from fourtier.errors import DataError
from fourtier.features import FeatureSource, OnTheFlyFeatures, compute_features
from fourtier.models.backbone import LoadedBackbone, TinyVideoViT, tiny_preprocess
from fourtier.models.ftp import FTP
from fourtier.training import OptimSettings, train_alignment
from helpers import index_frames, write_video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    (root / "videos").mkdir()
    rows = []
    for i in range(4):
        write_video(root / "videos" / f"v{i}.mp4", index_frames(12 + 3 * i, 48, 64 + 16 * i))
        rows.append(Annotation(f"v{i}", f"videos/v{i}.mp4", "ab"[i % 2], "train" if i < 3 else "val"))
    write_dataset(root, rows, ["a", "b"], {"kind": "test"}, [])
    return root


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    config = dict(frames=4, size=32, dim=16, depth=1, heads=2)
    return LoadedBackbone(TinyVideoViT(**config, head_sizes=(2,)), tiny_preprocess(config), "tiny")


def test_cache_and_on_the_fly_give_the_same_numbers(dataset, backbone, tmp_path):
    meta = compute_features(backbone, dataset, tmp_path / "features", 2, 1, batch_size=3, workers=1)
    assert meta["shape"] == [4, 2, 4, 2, 2, 16] and meta["classes"] == ["a", "b"]
    cached = FeatureSource(tmp_path / "features")
    live = OnTheFlyFeatures(dataset, backbone, 2, 1)
    assert (cached.n_views, cached.grid, cached.dim) == (live.n_views, live.grid, live.dim)
    assert cached.labels.tolist() == live.labels.tolist() == [0, 1, 0, 1]
    idx, views = np.array([0, 2, 3]), np.array([1, 0, 1])
    assert torch.allclose(cached.get(idx, views), live.get(idx, views), atol=1e-3)
    assert cached.split("val").tolist() == [3]


def test_missing_features_and_empty_split_are_clear_errors(dataset, backbone, tmp_path):
    with pytest.raises(DataError, match="has no features: run the features stage first"):
        FeatureSource(tmp_path / "nothing")
    compute_features(backbone, dataset, tmp_path / "f", 1, 1, batch_size=4, workers=1)
    with pytest.raises(DataError, match=r"no clips in split 'test' \(splits present: \['train', 'val'\]\)"):
        FeatureSource(tmp_path / "f").split("test")


def test_text_dim_mismatch_is_a_clear_error(dataset, backbone, tmp_path):
    compute_features(backbone, dataset, tmp_path / "f", 1, 1, batch_size=4, workers=1)
    source = FeatureSource(tmp_path / "f")
    model = FTP(source.dim, source.grid, ["A"], n_classes=1, text_dim=384)
    pooled = np.zeros((4, 4, 512), np.float16)
    with pytest.raises(DataError, match="text embeddings are 512-d but the alignment heads expect 384-d"):
        train_alignment(model, source, np.arange(3), np.arange(3, 4), pooled, OptimSettings(1, 2, 1e-3, 0, (0.9, 0.95), 0), 0)
