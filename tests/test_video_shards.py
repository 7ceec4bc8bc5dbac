"""Videos of a large dataset in zip shards (contract.pack_videos) and read back through store.local_file."""
import json
import os
import zipfile

import numpy as np

from fourtier.data.contract import Annotation, pack_videos, prune_videos, read_annotations, write_dataset
from fourtier.data.store import local_file, open_item
from fourtier.video import media
from fourtier.video.clips import Preprocess, load_views

from helpers import index_frames, write_video

PRE = Preprocess(frames=4, size=32, mode="letterbox", mean=(0.5,) * 3, std=(0.5,) * 3)


def small_dataset(root, n: int):
    (root / "videos").mkdir(parents=True)
    rows = []
    for i in range(n):
        frames = index_frames(6 + i, height=48, width=64)  # clip i has 6 + i frames: its own content
        write_video(root / "videos" / f"clip{i}.mp4", frames)
        rows.append(Annotation(f"clip{i}", f"videos/clip{i}.mp4", "a" if i % 2 else "b", "train"))
    write_dataset(root, rows, ["a", "b"], {"kind": "test"}, skipped=[])
    return {r.video_id: (root / r.path).read_bytes() for r in rows}


def test_pack_videos_moves_each_clip_into_its_shard_in_order_and_the_checksums_follow(tmp_path):
    ds = tmp_path / "ds"
    originals = small_dataset(ds, 5)
    before = json.loads((ds / "manifest.json").read_text())["checksums"]
    assert pack_videos(ds, shard_above=5, shard_size=2) == 0  # not above the threshold: left as files
    assert (ds / "videos" / "clip0.mp4").exists()
    assert pack_videos(ds, shard_above=4, shard_size=2) == 3
    assert sorted(p.name for p in ds.iterdir()) == ["annotations.csv", "classes.txt", "manifest.json", "shards"]
    rows = read_annotations(ds)
    assert [r.path for r in rows] == [f"shards/shard-{i // 2:05d}.zip:videos/clip{i}.mp4" for i in range(5)]
    assert [r.label for r in rows] == ["b", "a", "b", "a", "b"]
    for r in rows:
        with open_item(ds, r.path) as fh:
            assert fh.read() == originals[r.video_id]
    manifest = json.loads((ds / "manifest.json").read_text())
    assert list(manifest["checksums"]) == [r.path for r in rows]
    assert list(manifest["checksums"].values()) == list(before.values())
    with zipfile.ZipFile(ds / "shards/shard-00002.zip") as zf:
        assert zf.namelist() == ["videos/clip4.mp4"]
        assert zf.getinfo("videos/clip4.mp4").compress_type == zipfile.ZIP_STORED


def test_shards_are_byte_identical_across_runs(tmp_path):
    for name in ("one", "two"):
        small_dataset(tmp_path / name, 3)
        pack_videos(tmp_path / name, shard_above=1, shard_size=2)
    for shard in ("shard-00000.zip", "shard-00001.zip"):
        assert (tmp_path / "one/shards" / shard).read_bytes() == (tmp_path / "two/shards" / shard).read_bytes()


def test_a_clip_in_a_shard_decodes_to_the_frames_of_its_file(tmp_path):
    ds = tmp_path / "ds"
    small_dataset(ds, 3)
    from_files = {r.video_id: load_views(str(ds / r.path), PRE, 2, 1) for r in read_annotations(ds)}
    keyframes = {r.video_id: media.read_keyframes(ds / r.path, 3).frames for r in read_annotations(ds)}
    pack_videos(ds, shard_above=1, shard_size=2)
    for r in read_annotations(ds):
        with local_file(ds, r.path) as path:
            assert path.suffix == ".mp4" and path.exists()
            np.testing.assert_array_equal(load_views(str(path), PRE, 2, 1), from_files[r.video_id])
            for a, b in zip(media.read_keyframes(path, 3).frames, keyframes[r.video_id]):
                np.testing.assert_array_equal(a, b)
        assert not path.exists()  # the temporary copy is gone
    with local_file(ds, "annotations.csv") as path:  # a plain file is read where it is
        assert path == ds / "annotations.csv"


def test_prune_videos_removes_what_the_annotations_do_not_list(tmp_path):
    ds = tmp_path / "ds"
    small_dataset(ds, 2)
    (ds / "videos" / "left-by-a-killed-run.mp4").write_bytes(b"x")
    (ds / "videos" / "empty").mkdir()
    assert prune_videos(ds) == 1
    assert sorted(os.listdir(ds / "videos")) == ["clip0.mp4", "clip1.mp4"]
