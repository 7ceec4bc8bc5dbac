"""Every third-party test clip (FOURTIER_TESTVIDEOS) goes through a `folder` dataset and `tile`: tiled correctly, or reported."""
import csv
from fractions import Fraction

import numpy as np
import pytest

from fourtier.config.caption import TileParams
from fourtier.config.data import FolderSpec
from fourtier.data import folder
from fourtier.data.contract import read_annotations
from fourtier.video import media
from fourtier.video.tiling import load_tile, read_tile_index, tile_dataset

# display size (square pixels, rotation applied) and decodable frames, from MANIFEST.md.
# torchcodec_nasa has two video streams; like ffmpeg and decord we read the larger one (480x270, 390 frames).
EXPECTED = {
    "mmaction2_demo.mp4": ((340 * Fraction(64, 51), 256), 280),
    "mmaction2_rawvideo_part_0.mp4": ((340 * Fraction(1024, 765), 256), 32),
    "mmaction2_test.avi": ((320, 240), 164),
    "decord_flipping_a_pancake.mkv": ((426, 240), 310),
    "imageio_test.webm": ((640, 480), 94),
    "decord_video_90.mov": ((320, 568), 3),
    "decord_video_180.mov": ((568, 320), 3),
    "imageio_realshort.mp4": ((320, 240), 36),
    "torchcodec_nasa_13013.mp4": ((480, 270), 390),
}
BROKEN = {"decord_corrupted.mp4": "corrupt", "mediabunny_annex-b_truncated.mp4": "truncated"}
K, HEIGHT = 5, 96


def make_csv(root, names, path):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for name in names:
            writer.writerow([name, name.split("_")[0]])
    return path


@pytest.fixture(scope="module")
def ingested(testvideos, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("testvideos")
    clips = sorted(p.name for p in testvideos.iterdir() if p.suffix != ".md")
    assert set(clips) == set(EXPECTED) | set(BROKEN), "MANIFEST and this test disagree on the clip list"
    spec = FolderSpec(name="testvideos", root=testvideos, csv=make_csv(testvideos, clips, tmp / "labels.csv"),
                      val_fraction=0.0, short_side=0, seed=0)
    manifest = folder.download(spec, tmp / "raw", workers=2)
    summary = tile_dataset(tmp / "raw", tmp / "tiles", K, TileParams(height=HEIGHT, jpeg_quality=90, shard_above=5000, shard_size=1000), workers=2)
    return tmp, manifest, summary


def test_broken_clips_are_reported_with_reason(ingested):
    _, manifest, _ = ingested
    reasons = {s["item"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(BROKEN)
    for name, word in BROKEN.items():
        assert reasons[name].startswith(word), reasons[name]
    assert manifest["num_videos"] == len(EXPECTED) and manifest["expected"] == len(EXPECTED) + len(BROKEN)


def test_every_readable_clip_is_tiled_with_display_geometry(ingested):
    tmp, _, summary = ingested
    assert summary["tiled"] == len(EXPECTED) and summary["skipped"] == 0
    by_id = {r["video_id"]: r for r in read_tile_index(tmp / "tiles")}
    for a in read_annotations(tmp / "raw"):
        name = a.path.split("/", 1)[1].replace("imageio_test.mp4", "imageio_test.webm")  # re-encoded at ingest
        (dw, dh), frames = EXPECTED[name]
        row = by_id[a.video_id]
        assert row["status"] == "ok", (name, row["reason"])
        assert int(row["n_frames"]) == frames, name
        tile = load_tile(tmp / "tiles", row["location"])
        expected_width = round(HEIGHT * round(dw) / dh)
        assert tile.shape == (HEIGHT, expected_width * K, 3), name
        # not black, not flat: real content in every panel
        for panel in np.split(tile, K, axis=1):
            assert panel.std() > 5, name
        indices = [int(i) for i in row["frame_indices"].split(";")]
        assert indices == sorted(indices) and max(indices) < frames


def test_webm_without_duration_is_stream_copied_at_ingest_and_tiled_through_ffmpeg_directly(ingested, testvideos):
    tmp, manifest, _ = ingested
    # decord cannot open it, so the folder ingest stores its stream in MP4 (no re-encode), which every stage reads
    assert manifest["normalised"] == 1 and manifest["remuxed"] == 1
    row = next(r for r in read_tile_index(tmp / "tiles") if r["video_id"] == "imageio_test")
    assert row["reader"] == "decord" and row["status"] == "ok"
    # the original file itself still tiles, through the PyAV reader
    key = media.read_keyframes(testvideos / "imageio_test.webm", K)
    assert key.reader == "pyav" and key.n_frames == 94 and key.display_size == (640, 480)


@pytest.mark.parametrize("name", ["decord_video_90.mov", "decord_video_180.mov", "mmaction2_demo.mp4"])
def test_decord_pyav_and_the_ffmpeg_command_line_agree_on_orientation(testvideos, name):
    """The reference is the ffmpeg command line's own autorotated decode of the same frames."""
    path = str(testvideos / name)
    info = media.probe(path)
    fast, fallback = media._read_decord(path, 3, info), media._read_pyav(path, 3, info)
    assert fast.indices == fallback.indices
    unique = sorted(set(fallback.indices))
    select = "+".join(f"eq(n\\,{i})" for i in unique)
    h, w = fallback.frames[0].shape[:2]
    raw = media.run_ffmpeg(["-i", path, "-vf", f"select={select}", "-fps_mode", "passthrough", "-f", "rawvideo",
                            "-pix_fmt", "rgb24", "pipe:1"]).stdout
    assert len(raw) == len(unique) * h * w * 3, "the command line gave frames of another size"
    reference = dict(zip(unique, np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)))
    assert len(reference) == len(unique)
    for i, a, b in zip(fallback.indices, fast.frames, fallback.frames):
        assert a.shape == b.shape == reference[i].shape
        assert np.abs(b.astype(int) - reference[i]).mean() < 2, name
        assert np.abs(a.astype(int) - reference[i]).mean() < 6, name


def test_normalisation_applies_rotation_and_square_pixels(testvideos, tmp_path):
    names = ["decord_video_90.mov", "mmaction2_demo.mp4", "imageio_test.webm", "mmaction2_test.avi"]
    spec = FolderSpec(name="norm", root=testvideos, csv=make_csv(testvideos, names, tmp_path / "labels.csv"),
                      val_fraction=0.0, short_side=160, seed=0)
    manifest = folder.download(spec, tmp_path / "raw", workers=2)
    assert manifest["normalised"] == 4 and not manifest["skipped"]
    for a in read_annotations(tmp_path / "raw"):
        stream = media.probe(tmp_path / "raw" / a.path).main_stream
        name = next(n for n in names if n.startswith(a.video_id))
        (dw, dh), _ = EXPECTED[name]
        assert stream.rotation == 0 and stream.sar == 1, name
        assert min(stream.width, stream.height) == 160, name
        assert stream.width / stream.height == pytest.approx(float(dw / dh), rel=0.02), name


def test_conforming_videos_are_copied_not_reencoded(testvideos, tmp_path):
    spec = FolderSpec(name="copy", root=testvideos,
                      csv=make_csv(testvideos, ["imageio_realshort.mp4"], tmp_path / "labels.csv"),
                      val_fraction=0.0, short_side=320, seed=0)
    manifest = folder.download(spec, tmp_path / "raw", workers=1)
    assert manifest["normalised"] == 0
    copied = tmp_path / "raw" / "videos" / "imageio_realshort.mp4"
    assert copied.read_bytes() == (testvideos / "imageio_realshort.mp4").read_bytes()
