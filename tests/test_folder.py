"""A user's own folder of videos: ids keep the whole name, bad rows are named, variable frame rate is valid."""
import csv
import json

import pytest

from fourtier import video
from fourtier.data import folder
from fourtier.data.contract import read_annotations
from fourtier.errors import DataError
from fourtier.params import FolderSpec
from fourtier.video import run_ffmpeg
from helpers import index_frames, with_rotation, write_video


def write_csv(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def spec_for(root, csv_path, short_side=0):
    return FolderSpec(name="mine", root=root, csv=csv_path, val_fraction=0.0, short_side=short_side, seed=0)


def vfr_clip(path, jitter=0.02):
    """Irregular timestamps (as phone and screen recordings have): frame n at n/30 s plus up to 80 ms of jitter.
    It decodes cleanly; ffmpeg's null muxer still complains about non-monotonic dts."""
    proc = run_ffmpeg(["-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=30:duration=2",
                       "-vf", f"setpts='(N/30+{jitter}*mod(N*7,5))/TB'", "-fps_mode", "passthrough",
                       "-c:v", "libx264", "-bf", "2", str(path)])
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    return path


def test_dotted_names_keep_their_whole_stem_and_their_own_content(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "2021.05.03_a.mp4", index_frames(6))
    write_video(root / "2021.05.04_b.mp4", index_frames(9))
    csv_path = write_csv(tmp_path / "labels.csv", [["2021.05.03_a.mp4", "x"], ["2021.05.04_b.mp4", "y"]])
    manifest = folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    rows = {a.video_id: a for a in read_annotations(tmp_path / "raw")}
    assert set(rows) == {"2021.05.03_a", "2021.05.04_b"} and manifest["num_videos"] == 2
    assert len({a.path for a in rows.values()}) == 2
    for vid, original in (("2021.05.03_a", "2021.05.03_a.mp4"), ("2021.05.04_b", "2021.05.04_b.mp4")):
        assert (tmp_path / "raw" / rows[vid].path).read_bytes() == (root / original).read_bytes()


@pytest.mark.parametrize("rows, message", [
    ([["a.mp4", "x"], ["./a.mp4", "y"]], "same video id"),
    ([["sub/b.mp4", "x"], ["sub__b.mp4", "y"]], "same video id"),
    ([["./.mp4", "x"]], "no file name before its extension"),
])
def test_clashing_or_nameless_rows_are_named(tmp_path, rows, message):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.mp4", "sub__b.mp4", ".mp4"):
        write_video(root / name, index_frames(4))
    csv_path = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError, match=message) as err:
        folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    assert "labels.csv:" in str(err.value)  # the row is named


def test_label_with_a_line_break_is_rejected_with_its_row(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "a.mp4", index_frames(4))
    write_video(root / "b.mp4", index_frames(4))
    csv_path = write_csv(tmp_path / "labels.csv", [["a.mp4", "jump"], ["b.mp4", "run\nfast"]])
    with pytest.raises(DataError, match=r"labels.csv:3: the label of 'b.mp4' contains a line break"):
        folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)


def test_paths_outside_root_are_read_and_recorded(tmp_path, capsys):
    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "in.mp4", index_frames(4))
    write_video(tmp_path / "up.mp4", index_frames(5))
    write_video(tmp_path / "abs.mp4", index_frames(6))
    csv_path = write_csv(tmp_path / "labels.csv", [["in.mp4", "x"], ["../up.mp4", "y"],
                                                   [str(tmp_path / "abs.mp4"), "y"]])
    manifest = folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    assert manifest["num_videos"] == 3
    assert sorted(manifest["outside_root"]) == sorted(["../up.mp4", str(tmp_path / "abs.mp4")])
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["outside_root"] == manifest["outside_root"]
    assert "2 listed file(s) lie outside" in capsys.readouterr().out


def test_variable_frame_rate_and_rotated_clips_are_valid(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    vfr_clip(root / "phone.mp4")
    with_rotation(vfr_clip(tmp_path / "plain.mp4", 0.03), root / "rotated.mp4", 90)
    check = video.decode_check(root / "phone.mp4")
    assert check.frames == 60 and check.errors == ()  # the muxer's dts complaint is not a decode error
    csv_path = write_csv(tmp_path / "labels.csv", [["phone.mp4", "x"], ["rotated.mp4", "y"]])
    manifest = folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    assert manifest["skipped"] == [] and manifest["num_videos"] == 2
    for a in read_annotations(tmp_path / "raw"):  # and the rest of the pipeline reads them
        keyframes = video.read_keyframes(tmp_path / "raw" / a.path, 5)
        assert len(keyframes.frames) == 5
        if a.video_id == "rotated":
            assert keyframes.frames[0].shape[:2] == (160, 120)  # the rotation is applied


def test_a_real_decode_error_still_counts(testvideos):
    check = video.decode_check(testvideos / "decord_corrupted.mp4")
    assert check.errors and "h264" in check.errors[0]
    assert video.readability_problem(video.probe(testvideos / "decord_corrupted.mp4"), check).startswith("corrupt")


def test_predict_accepts_a_variable_frame_rate_clip(tmp_path):
    from fourtier.cli import _decodable

    clip = vfr_clip(tmp_path / "screen.mp4")
    assert _decodable(str(clip), tmp_path) == str(clip)  # used as it is, not refused as corrupt
