"""A user's own folder of videos: ids keep the whole name, bad rows are named, variable frame rate is valid."""
import csv
import json
import os

import pytest

from fourtier.config.data import FolderSpec
from fourtier.data import folder
from fourtier.data.contract import read_annotations
from fourtier.errors import DataError
from fourtier.video import media
from fourtier.video.media import run_ffmpeg
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
    check = media.decode_check(root / "phone.mp4")
    assert check.frames == 60 and check.errors == ()  # the muxer's dts complaint is not a decode error
    csv_path = write_csv(tmp_path / "labels.csv", [["phone.mp4", "x"], ["rotated.mp4", "y"]])
    manifest = folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    assert manifest["skipped"] == [] and manifest["num_videos"] == 2
    for a in read_annotations(tmp_path / "raw"):  # and the rest of the pipeline reads them
        keyframes = media.read_keyframes(tmp_path / "raw" / a.path, 5)
        assert len(keyframes.frames) == 5
        if a.video_id == "rotated":
            assert keyframes.frames[0].shape[:2] == (160, 120)  # the rotation is applied


def test_a_real_decode_error_still_counts(testvideos):
    check = media.decode_check(testvideos / "decord_corrupted.mp4")
    assert check.errors and "h264" in check.errors[0]
    assert media.readability_problem(media.probe(testvideos / "decord_corrupted.mp4"), check).startswith("corrupt")


def test_predict_accepts_a_variable_frame_rate_clip(tmp_path):
    from fourtier.cli import _decodable

    clip = vfr_clip(tmp_path / "screen.mp4")
    assert _decodable(str(clip), tmp_path) == str(clip)  # used as it is, not refused as corrupt


@pytest.mark.parametrize("path, vid", [
    ("日本語.mp4", "日本語"),
    ("café.mp4", "café"),
    ("cafe\u0301.mp4", "café"),  # the same name typed decomposed (NFD, as macOS may) gives the NFC id
    ("cafè.mp4", "cafè"),
    ("資料/動画 1.mp4", "資料__動画_1"),
    ("हिंदी.mp4", "हिंदी"),  # combining vowel signs are kept
    ("a\u3000b\u2028c.mp4", "a_b_c"),  # ideographic space and a line separator are whitespace
    ('x:y*z?"<>|w.mp4', "x_y_z_w"),
    ("a b/c?d.mp4", "a_b__c_d"),  # ASCII ids are as before
])
def test_video_ids_keep_unicode_names_and_replace_unsafe_characters(path, vid):
    assert folder.video_id_for(path) == vid


def test_a_video_id_too_long_for_a_file_name_is_named():
    with pytest.raises(DataError, match=r"labels.csv:2: the video id of '字+\.mp4' would be 270 bytes"):
        folder.video_id_for("字" * 90 + ".mp4", "labels.csv:2")


def test_unicode_named_files_are_ingested_with_their_own_ids(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    names = {"日本語.mp4": 5, "café.mp4": 6, "cafè.mp4": 7}
    for name, n in names.items():
        write_video(root / name, index_frames(n))
    csv_path = write_csv(tmp_path / "labels.csv", [[name, "x"] for name in names])
    manifest = folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    rows = {a.video_id: a for a in read_annotations(tmp_path / "raw")}
    assert set(rows) == {"日本語", "café", "cafè"} and manifest["skipped"] == []
    for name in names:
        assert (tmp_path / "raw" / rows[name[:-4]].path).read_bytes() == (root / name).read_bytes()


@pytest.mark.parametrize("names, why", [
    (["café.mp4", "cafe\u0301.mp4"], "accents encoded two ways"),  # two files on Linux, one name to a reader
    (["a?b.mp4", "a*b.mp4"], "rename one file so the names differ"),
])
def test_names_that_still_meet_in_one_id_are_both_named(tmp_path, names, why):
    root = tmp_path / "videos"
    root.mkdir()
    for name in names:
        write_video(root / name, index_frames(4))
    csv_path = write_csv(tmp_path / "labels.csv", [[name, "x"] for name in names])
    with pytest.raises(DataError, match="same video id") as err:
        folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    message = str(err.value)
    assert all(repr(name) in message for name in names) and "labels.csv:2" in message and "labels.csv:3" in message
    assert why in message


def test_a_label_csv_with_an_excel_bom_is_read(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "a.mp4", index_frames(4))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,split\r\na.mp4,jump,train\r\n", encoding="utf-8-sig")  # as Excel saves it
    assert folder.read_label_csv(csv_path) == [{"path": "a.mp4", "label": "jump", "split": "train"}]
    manifest = folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    assert manifest["num_videos"] == 1


@pytest.mark.parametrize("data, message", [
    ("path,label\nvidéo.mp4,x\n".encode("cp1252"), r"labels.csv:2: not UTF-8 text \(byte 0xe9\)"),
    ("path,label\na.mp4,x\n".encode("utf-16"), "labels.csv is UTF-16 text; save it as UTF-8"),
], ids=["cp1252", "utf-16"])
def test_a_label_csv_that_is_not_utf8_is_named_with_the_fix(tmp_path, data, message):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        folder.read_label_csv(csv_path)


def test_symlink_loops_and_broken_symlinks_are_skipped_with_what_they_are(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    write_video(root / "ok.mp4", index_frames(4))
    (root / "linked.mp4").symlink_to("ok.mp4")  # a good link is read
    (root / "a.mp4").symlink_to("b.mp4")
    (root / "b.mp4").symlink_to("a.mp4")
    (root / "gone.mp4").symlink_to("nowhere.mp4")
    (root / "sub").mkdir()
    listed = ["ok.mp4", "linked.mp4", "a.mp4", "gone.mp4", "sub", "absent.mp4"]
    csv_path = write_csv(tmp_path / "labels.csv", [[name, "x"] for name in listed])
    manifest = folder.download(spec_for(root, csv_path), tmp_path / "raw", workers=1)
    reasons = {s["item"]: s["reason"] for s in manifest["skipped"]}
    assert manifest["num_videos"] == 2 and set(reasons) == {"a.mp4", "gone.mp4", "sub", "absent.mp4"}
    assert reasons["a.mp4"].startswith(f"symlink loop: {root / 'a.mp4'} -> b.mp4 -> a.mp4 never reaches a file")
    target = os.path.realpath(root / "nowhere.mp4")
    assert reasons["gone.mp4"].startswith(f"broken symlink pointing to 'nowhere.mp4' ({target}), which does not exist")
    assert reasons["sub"].startswith("is a folder, not a video file")
    assert reasons["absent.mp4"] == "file not found"
    assert manifest["missing_ids"] == sorted(reasons)
    assert manifest["accounting"]["train"]["x"] == {"expected": 6, "present": 2, "missing": 4, "unreadable": 0}


# --- resuming a killed ingest, and conforming clips that are never re-encoded ---------------------------------

KILL_AFTER = """
import os, signal, sys
from pathlib import Path
from fourtier.config.data import FolderSpec
from fourtier.data import folder

done, original = [0], folder.ingest_one

def ingest_one_then_die(job):
    if done[0] == int(sys.argv[4]):  # SIGKILL while the next clip is half-written, as a kill -9 would
        Path(job[1]).with_name(folder.PARTIAL_PREFIX + Path(job[1]).name + ".mp4").write_bytes(b"half a clip")
        os.kill(os.getpid(), signal.SIGKILL)
    done[0] += 1
    return original(job)

folder.ingest_one = ingest_one_then_die
spec = FolderSpec(name="mine", root=Path(sys.argv[1]), csv=Path(sys.argv[2]), val_fraction=0.0, short_side=32, seed=0)
folder.download(spec, Path(sys.argv[3]), workers=1)
"""


def resumable_folder(tmp_path, n=8):
    """n clips: the even ones need normalising to short side 32, the odd ones already conform."""
    root = tmp_path / "videos"
    root.mkdir()
    for i in range(n):
        write_video(root / f"c{i}.mp4", index_frames(4 + i, 48, 64) if i % 2 == 0 else index_frames(4 + i, 32, 48))
    write_video(root / "broken.mp4", index_frames(4))
    (root / "broken.mp4").write_bytes((root / "broken.mp4").read_bytes()[:300])  # skipped: its result is kept too
    rows = [["broken.mp4", "x"]] + [[f"c{i}.mp4", "xy"[i % 2]] for i in range(n)]
    return root, write_csv(tmp_path / "labels.csv", rows)


def kill_ingest_after(root, csv_path, out_dir, clips):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILL_AFTER, str(root), str(csv_path), str(out_dir), str(clips)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]


def counting_ingest_one(monkeypatch):
    calls = []

    def counted(job):
        calls.append(job[1].name)
        return original(job)

    original = folder.ingest_one
    monkeypatch.setattr(folder, "ingest_one", counted)
    return calls


def dataset_files(out_dir):
    return {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file()}


def test_a_killed_ingest_resumes_without_redoing_finished_clips(tmp_path, monkeypatch):
    root, csv_path = resumable_folder(tmp_path)
    out = tmp_path / "killed" / "mine"
    kill_ingest_after(root, csv_path, out, clips=4)
    journal = out / folder.JOURNAL
    assert len(journal.read_text().splitlines()) == 4 and not (out / "annotations.csv").exists()
    with open(journal, "ab") as fh:
        fh.write(b'{"v": 1, "id": "c4", "sou')  # a line cut short by the kill
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir() if not p.name.startswith(".")}
    assert sorted(finished) == ["c0.mp4", "c1.mp4", "c2.mp4"]  # broken.mp4 was the first of the four

    calls = counting_ingest_one(monkeypatch)
    manifest = folder.download(spec_for(root, csv_path, short_side=32), out, workers=1)
    assert calls == ["c3", "c4", "c5", "c6", "c7"]  # only the clips the killed run had not finished
    assert {n: (out / "videos" / n).stat().st_mtime_ns for n in finished} == finished  # not written again
    assert manifest["normalised"] == 4 and manifest["remuxed"] == 0 and len(manifest["skipped"]) == 1

    calls.clear()
    whole = tmp_path / "whole" / "mine"
    folder.download(spec_for(root, csv_path, short_side=32), whole, workers=1)
    assert len(calls) == 9
    assert dataset_files(out) == dataset_files(whole)  # same annotations, manifest and videos; no journal left
    assert not journal.exists() and "annotations.csv" in dataset_files(out)


def test_a_resumed_ingest_redoes_clips_whose_source_or_stored_file_changed(tmp_path, monkeypatch):
    root, csv_path = resumable_folder(tmp_path)
    out = tmp_path / "raw"
    kill_ingest_after(root, csv_path, out, clips=6)  # broken, c0 ... c4 done
    write_video(root / "c1.mp4", index_frames(12, 32, 48))  # replaced since: other size and mtime
    (out / "videos" / "c2.mp4").write_bytes(b"damaged")  # the stored file no longer matches its journal line
    calls = counting_ingest_one(monkeypatch)
    manifest = folder.download(spec_for(root, csv_path, short_side=32), out, workers=1)
    assert calls == ["c1", "c2", "c5", "c6", "c7"]
    assert (out / "videos" / "c1.mp4").read_bytes() == (root / "c1.mp4").read_bytes()
    assert manifest["num_videos"] == 8 and media.decode_check(out / "videos" / "c2.mp4").frames == 6

    kill_ingest_after(root, csv_path, out, clips=3)  # the same clips, another short side: nothing is reused
    calls.clear()
    folder.download(spec_for(root, csv_path, short_side=24), out, workers=1)
    assert len(calls) == 9


def packet_hashes(path):
    """MD5 of every coded video packet: equal for a stream copy, different after any re-encode."""
    proc = run_ffmpeg(["-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "framemd5", "-"])
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    return [line.rsplit(",", 1)[1].strip() for line in proc.stdout.decode().splitlines() if not line.startswith("#")]


def test_a_conforming_clip_that_decord_cannot_open_is_stream_copied_not_reencoded(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    # VP9 WebM written to a pipe, so its header has no duration, as SSv2's clips: decord cannot open it
    proc = run_ffmpeg(["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "libvpx-vp9",
                       "-b:v", "100k", "-f", "webm", "pipe:1"])
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    (root / "ssv2like.webm").write_bytes(proc.stdout)
    assert not folder.decord_opens(root / "ssv2like.webm")
    write_video(root / "small.mp4", index_frames(6, 40, 56))
    csv_path = write_csv(tmp_path / "labels.csv", [["ssv2like.webm", "x"], ["small.mp4", "y"]])
    manifest = folder.download(spec_for(root, csv_path, short_side=48), tmp_path / "raw", workers=1)
    assert manifest["normalised"] == 1 and manifest["remuxed"] == 1 and manifest["skipped"] == []
    stored = {a.video_id: tmp_path / "raw" / a.path for a in read_annotations(tmp_path / "raw")}
    assert stored["ssv2like"].suffix == ".mp4" and folder.decord_opens(stored["ssv2like"])
    assert packet_hashes(stored["ssv2like"]) == packet_hashes(root / "ssv2like.webm")  # the same coded frames
    assert stored["small"].read_bytes() == (root / "small.mp4").read_bytes()  # short side 40 <= 48: kept
