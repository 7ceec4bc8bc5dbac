import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from fourtier.data.store import ItemReader, ItemWriter
from fourtier.errors import DataError, VideoError
from fourtier.video import media
from fourtier.video.tiling import make_tile, tile_video
from helpers import index_frames, reencode, with_rotation, write_video

H = 64


def panels_of(result, k):
    tile = np.asarray(Image.open(io.BytesIO(result.jpeg)))
    width = tile.shape[1] // k
    assert tile.shape == (H, width * k, 3)
    return [tile[:, i * width:(i + 1) * width] for i in range(k)]


def grey_level(panel):
    """Mean of the bottom-right area, away from the white orientation marker."""
    h, w, _ = panel.shape
    return panel[h // 2:, w // 2:].mean()


def test_keyframe_indices_are_centres_of_equal_time_segments():
    pts = np.arange(20) / 10.0
    assert media.keyframe_indices(pts, 5).tolist() == [2, 6, 10, 14, 18]
    assert media.keyframe_indices(pts, 1).tolist() == [10]
    # fewer frames than K: frames repeat, in order (the frame on screen at each centre time)
    assert media.keyframe_indices(np.arange(3) / 30, 5).tolist() == [0, 0, 1, 2, 2]


def test_keyframe_indices_follow_time_not_index_for_variable_frame_rate():
    pts = np.concatenate([np.arange(10) * 0.05, 0.5 + np.arange(10) * 0.2])  # 20 fps, then 5 fps
    idx = media.keyframe_indices(pts, 5)
    # clip spans 0..2.5 s; frames on screen at 0.25, 0.75, 1.25, 1.75, 2.25 s (index centres: 2, 6, 10, 14, 18)
    assert idx.tolist() == [5, 11, 13, 16, 18]


def test_tile_geometry_and_frame_choice(tmp_path):
    path = write_video(tmp_path / "v.mp4", index_frames(20))
    result = tile_video(path, 5, H, 95, "v")
    assert result.row["status"] == "ok", result.row
    assert result.row["frame_indices"] == "2;6;10;14;18"
    assert result.row["timestamps"] == "0.2000;0.6000;1.0000;1.4000;1.8000"
    panels = panels_of(result, 5)
    assert panels[0].shape[1] == round(H * 160 / 96)  # aspect ratio kept
    for i, panel in zip([2, 6, 10, 14, 18], panels):
        assert abs(grey_level(panel) - (20 + 9 * i)) < 4
        assert panel[: H // 8, : panel.shape[1] // 8].mean() > 240  # marker top-left: not flipped


def test_fewer_frames_than_k(tmp_path):
    path = write_video(tmp_path / "short.mp4", index_frames(3))
    result = tile_video(path, 5, H, 95, "short")
    assert result.row["frame_indices"] == "0;0;1;2;2"
    levels = [grey_level(p) for p in panels_of(result, 5)]
    assert levels[0] == pytest.approx(levels[1], abs=1) and levels[1] < levels[2] < levels[3]


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    src = write_video(tmp_path / "cfr.mp4", index_frames(20))
    vfr = reencode(src, tmp_path / "vfr.mp4", after_input=[
        "-vf", "settb=1/1000,setpts='if(lt(N,10),N*0.05,0.5+(N-10)*0.2)/TB'", "-fps_mode", "passthrough",
        "-enc_time_base:v", "1:1000"])
    result = tile_video(vfr, 5, H, 95, "vfr")
    assert result.row["frame_indices"] == "5;11;13;16;18"
    for i, panel in zip([5, 11, 13, 16, 18], panels_of(result, 5)):
        assert abs(grey_level(panel) - (20 + 9 * i)) < 4


def test_non_square_pixels_widen_the_panel(tmp_path):
    src = write_video(tmp_path / "v.mp4", index_frames(10))
    anamorphic = reencode(src, tmp_path / "sar.mp4", after_input=["-vf", "setsar=2/1"])
    stream = media.probe(anamorphic).main_stream
    assert stream.sar == 2 and stream.display_size == (320, 96)
    panels = panels_of(tile_video(anamorphic, 3, H, 95, "sar"), 3)
    assert panels[0].shape[1] == round(H * 320 / 96)


def test_rotation_metadata_is_applied(tmp_path):
    src = write_video(tmp_path / "v.mp4", index_frames(10))
    rotated = with_rotation(src, tmp_path / "rot.mp4", 90)
    info = media.probe(rotated)
    assert info.main_stream.rotation == 90 and info.main_stream.display_size == (96, 160)
    # the PyAV reader turns frames as the display matrix says (checked against the ffmpeg command line's
    # autorotate in test_testvideos.py)
    reference = media._read_pyav(str(rotated), 3, info)
    fast = media._read_decord(str(rotated), 3, info)
    assert fast.frames[0].shape == reference.frames[0].shape
    assert np.abs(fast.frames[1].astype(int) - reference.frames[1]).mean() < 3
    panel = panels_of(tile_video(rotated, 3, H, 95, "rot"), 3)[0]
    assert panel.shape[1] == round(H * 96 / 160)  # portrait now
    # 90 degrees counter-clockwise: the top-left marker of the coded frame ends up bottom-left
    h, w, _ = panel.shape
    assert panel[-h // 8:, : w // 8].mean() > 240 and panel[: h // 8, : w // 8].mean() < 200


@pytest.mark.parametrize("pix_fmt, codec, ext", [("yuv444p", "libx264", "mp4"), ("gray", "ffv1", "mkv")])
def test_yuv444_and_grayscale_input(tmp_path, pix_fmt, codec, ext):
    path = write_video(tmp_path / f"{pix_fmt}.{ext}", index_frames(10), pix_fmt=pix_fmt, codec=codec)
    assert media.probe(path).main_stream.pix_fmt == pix_fmt
    panels = panels_of(tile_video(path, 2, H, 95, pix_fmt), 2)
    for i, panel in zip([2, 7], panels):
        assert abs(grey_level(panel) - (20 + 9 * i)) < 4


def test_unreadable_file_is_skipped_with_reason(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    result = tile_video(junk, 5, H, 90, "junk")
    assert result.jpeg is None and result.row["status"] == "skipped"
    assert "cannot open" in result.row["reason"]
    with pytest.raises(VideoError, match="file not found"):
        media.probe(tmp_path / "missing.mp4")


def test_a_tile_wider_than_jpeg_allows_is_a_clear_error_not_a_pillow_traceback(tmp_path):
    """K panels of a wide video can pass the params check (made for square videos) and still exceed JPEG's
    65,500 px: the stage stops with the numbers and the fix, for every video alike, rather than skipping them."""
    frames = [np.zeros((9, 21, 3), np.uint8)] * 200  # 21:9 at 128 px high: 299 px a panel, 59,800 px for 200
    assert make_tile(frames, (21, 9), 128).shape == (128, 200 * 299, 3)
    with pytest.raises(DataError, match=r"K=250 panels of 299 x 128 px.*74,750 px wide.*65,500; lower K or tile.height"):
        make_tile([frames[0]] * 250, (21, 9), 128)


def test_make_tile_resizes_each_panel():
    frames = [np.full((30, 40, 3), v, np.uint8) for v in (0, 100, 200)]
    tile = make_tile(frames, (80, 30), 15)  # display aspect 8:3 (e.g. SAR 2:1)
    assert tile.shape == (15, 40 * 3, 3)
    assert tile[:, 40:80].mean() == pytest.approx(100, abs=1)


@pytest.mark.parametrize("total, shard_above, expect_sharded", [(5, 10, False), (25, 10, True)])
def test_item_store_roundtrip(tmp_path, total, shard_above, expect_sharded):
    items = {f"v{i}.jpg": bytes([i]) * (i + 1) for i in range(total)}
    with ItemWriter(tmp_path, total, shard_above, shard_size=10) as writer:
        locations = {name: writer.put(name, data) for name, data in items.items()}
    assert writer.sharded == expect_sharded
    reader = ItemReader(tmp_path)
    assert all(reader.get(locations[n]) == d for n, d in items.items())
    if expect_sharded:
        shards = sorted((tmp_path / "shards").iterdir())
        assert len(shards) == 3 and len(zipfile.ZipFile(shards[0]).namelist()) == 10
        assert not (tmp_path / "items").exists()


@pytest.mark.parametrize("codec, pix_fmt, ext, decoded_as", [
    ("gif", "pal8", "gif", "bgra"), ("libx265", "yuv420p", "ts", "yuv420p"), ("libvpx", "yuv420p", "webm", "yuv420p"),
    ("libvpx-vp9", "yuv444p", "webm", "yuv444p")])
def test_other_codecs_and_containers_probe_check_and_give_the_right_frames(tmp_path, codec, pix_fmt, ext, decoded_as):
    """GIF, HEVC in MPEG-TS, VP8 and VP9 (4:4:4) WebM: probed, fully decoded without errors, and the keyframes are
    the frames at the centres of K equal segments, in order (frame i's grey level is 20 + 9 i)."""
    if codec == "gif":  # a palette made from the clip, so each frame's grey is exact (the default one has 6 greys)
        src, path = write_video(tmp_path / "src.mp4", index_frames(10)), tmp_path / "clip.gif"
        proc = media.run_ffmpeg(["-i", str(src), "-vf", "split[a][b];[a]palettegen[p];[b][p]paletteuse=dither=none",
                                 str(path)])
        assert proc.returncode == 0, proc.stderr.decode()[-300:]
    else:
        path = write_video(tmp_path / f"clip.{ext}", index_frames(10), pix_fmt=pix_fmt, codec=codec)
    info = media.probe(path)
    assert (info.main_stream.width, info.main_stream.height) == (160, 96) and info.main_stream.pix_fmt == decoded_as
    check = media.decode_check(path)
    assert media.readability_problem(info, check) is None and check.frames == 10, check
    key = media.read_keyframes(path, 5, info)
    assert key.indices == [1, 3, 5, 7, 9]
    levels = [int(np.median(f[48:, 80:, 1])) for f in key.frames]  # away from the white corner square
    assert all(abs(level - (20 + 9 * i)) <= 3 for level, i in zip(levels, key.indices)), levels
    assert key.frames[0][:8, :8].min() > 200  # the white square is still top-left
