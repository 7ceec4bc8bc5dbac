"""The official split-file formats of UCF-101 and HMDB51 on tiny layouts built here."""
import pytest

from fourtier.data.public import hmdb51_rows, ucf101_rows
from fourtier.errors import DataError


def test_ucf101_split_files(tmp_path):
    d = tmp_path / "ucfTrainTestlist"
    d.mkdir()
    (d / "classInd.txt").write_text("2 Basketball\r\n1 ApplyEyeMakeup\r\n")  # CRLF and out of order, as shipped
    (d / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nBasketball/v_Basketball_g08_c01.avi 2\r\n")
    (d / "testlist01.txt").write_text("Basketball/v_Basketball_g01_c01.avi\r\n")
    rows, classes = ucf101_rows(tmp_path, 1)
    assert classes == ["ApplyEyeMakeup", "Basketball"]  # classInd order, not file order
    assert rows == [{"path": "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "label": "ApplyEyeMakeup", "split": "train"},
                    {"path": "Basketball/v_Basketball_g08_c01.avi", "label": "Basketball", "split": "train"},
                    {"path": "Basketball/v_Basketball_g01_c01.avi", "label": "Basketball", "split": "val"}]
    with pytest.raises(DataError, match="no trainlist02.txt"):
        ucf101_rows(tmp_path, 2)


def test_hmdb51_split_files(tmp_path):
    d = tmp_path / "testTrainMulti_7030_splits"
    d.mkdir()
    (d / "wave_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (d / "brush_hair_test_split1.txt").write_text("d.avi 2 \n")
    rows, classes = hmdb51_rows(tmp_path, 1)
    assert classes == ["brush_hair", "wave"]
    assert sorted((r["path"], r["split"]) for r in rows) == [("brush_hair/d.avi", "val"), ("wave/a.avi", "train"),
                                                            ("wave/b.avi", "val")]  # c.avi: not in split 1
    (d / "wave_test_split1.txt").write_text("a.avi 7\n")
    with pytest.raises(DataError, match="cannot read line 'a.avi 7'"):
        hmdb51_rows(tmp_path, 1)


@pytest.fixture
def static_server(tmp_path):
    from helpers import served_directory

    root = tmp_path / "www"
    root.mkdir()
    with served_directory(root) as url:
        yield root, url


def test_ucf101_download_from_a_local_mirror_accounts_for_every_listed_video(static_server, tmp_path):
    """A tiny UCF-style archive and split zip served on 127.0.0.1: the official split is read, one listed
    video is absent from the archive and one is corrupt; both are accounted for, the rest ingested."""
    import json
    import tarfile
    import zipfile

    from helpers import index_frames, write_video

    from fourtier.config.data import dataset_spec
    from fourtier.data.registry import download

    www, url = static_server
    videos = tmp_path / "build" / "UCF-101"
    for cls in ("ApplyEyeMakeup", "Basketball"):
        (videos / cls).mkdir(parents=True)
        for g in (1, 8):
            write_video(videos / cls / f"v_{cls}_g0{g}_c01.avi", index_frames(12, 48, 64), codec="mpeg4")
    corrupt = videos / "Basketball" / "v_Basketball_g08_c01.avi"
    corrupt.write_bytes(corrupt.read_bytes()[:600])
    with tarfile.open(www / "UCF101.tar.gz", "w:gz") as tf:
        tf.add(videos, arcname="UCF-101")
    with zipfile.ZipFile(www / "splits.zip", "w") as zf:
        zf.writestr("ucfTrainTestlist/classInd.txt", "1 ApplyEyeMakeup\r\n2 Basketball\r\n")
        zf.writestr("ucfTrainTestlist/trainlist01.txt",
                    "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nBasketball/v_Basketball_g08_c01.avi 2\r\n"
                    "Basketball/v_Basketball_g09_c01.avi 2\r\n")
        zf.writestr("ucfTrainTestlist/testlist01.txt",
                    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nBasketball/v_Basketball_g01_c01.avi\r\n")
    spec = dataset_spec("ucf101", {"type": "ucf101", "split": 1, "short_side": 32, "cache_dir": str(tmp_path / "cache"),
                                    "archive_url": f"{url}/UCF101.tar.gz", "splits_url": f"{url}/splits.zip"})
    out = tmp_path / "raw" / "ucf101"
    manifest = download(spec, out, workers=1)
    assert (out / "classes.txt").read_text() == "ApplyEyeMakeup\nBasketball\n"
    assert manifest["expected"] == 5 and manifest["num_videos"] == 3
    assert manifest["missing_ids"] == ["Basketball/v_Basketball_g09_c01.avi"]
    assert manifest["accounting"]["train"]["Basketball"] == {"expected": 2, "present": 0, "missing": 1, "unreadable": 1}
    assert manifest["accounting"]["val"]["ApplyEyeMakeup"]["present"] == 1
    assert manifest["source"]["archive_sha256"] and manifest["source"]["split"] == 1
    assert manifest["normalised"] == 3  # 48x64 -> short side 32
    # a second run reuses the downloaded archives and the extraction: the mirror can be gone
    for f in www.iterdir():
        f.unlink()
    again = download(spec, tmp_path / "raw2" / "ucf101", workers=1)
    assert again["checksums"] == manifest["checksums"]
    assert json.loads((out / "manifest.json").read_text())["missing_ids"] == manifest["missing_ids"]


def test_ssv2_local_copy_names_the_files_it_expects_then_reads_the_templates(tmp_path):
    import json

    from fourtier.data.ssv2 import ssv2_rows

    with pytest.raises(DataError, match="missing 20bn-something-something-v2, labels/labels.json"):
        ssv2_rows(tmp_path)
    (tmp_path / "20bn-something-something-v2").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/labels.json").write_text(json.dumps({"Pushing something from left to right": "1",
                                                             "Approaching something with your camera": "0"}))
    (tmp_path / "labels/train.json").write_text(json.dumps([
        {"id": "7", "label": "pushing a cup from left to right", "template": "Pushing [something] from left to right"}]))
    (tmp_path / "labels/validation.json").write_text(json.dumps([
        {"id": "9", "label": "approaching a box with your camera", "template": "Approaching [something] with your camera"}]))
    rows, classes = ssv2_rows(tmp_path)
    assert classes == ["Approaching something with your camera", "Pushing something from left to right"]
    assert rows == [{"path": "20bn-something-something-v2/7.webm", "video_id": "7",
                     "label": "Pushing something from left to right", "split": "train"},
                    {"path": "20bn-something-something-v2/9.webm", "video_id": "9",
                     "label": "Approaching something with your camera", "split": "val"}]


def test_three_splits_give_every_video_once_with_its_role_in_each(tmp_path):
    """split: all on UCF-101- and HMDB51-style split files: each video is listed once, and `folds` says what it
    is in each official split, video by video (UCF: test in its group's split, train in the others; HMDB: the
    0/1/2 tag of each split file, 0 = unused); `split` is its role in the first split."""
    import zipfile

    from helpers import HMDB_TAGS

    from fourtier.data.contract import parse_folds
    from fourtier.data.public import split_rows

    classes = ["Biking", "PushUps"]
    d = tmp_path / "ucf" / "ucfTrainTestlist"
    d.mkdir(parents=True)
    (d / "classInd.txt").write_text("1 Biking\r\n2 PushUps\r\n")
    for k in (1, 2, 3):
        (d / f"trainlist0{k}.txt").write_text("".join(f"{c}/v_{c}_g0{g}_c01.avi {i}\r\n" for i, c in enumerate(classes, 1)
                                                      for g in (1, 2, 3) if g != k))
        (d / f"testlist0{k}.txt").write_text("".join(f"{c}/v_{c}_g0{k}_c01.avi\r\n" for c in classes))
    rows, got = split_rows("ucf101", tmp_path / "ucf", (1, 2, 3))
    assert got == classes and len(rows) == 6
    for row in rows:
        group = int(row["path"].split("_g0")[1][0])
        assert parse_folds(row["folds"]) == {k: "val" if k == group else "train" for k in (1, 2, 3)}, row
        assert row["split"] == parse_folds(row["folds"])[1] and row["label"] == row["path"].split("/")[0]
    rows, _ = split_rows("ucf101", tmp_path / "ucf", (3, 1))  # a list in any order: split follows the lowest
    assert {r["path"]: r["split"] for r in rows}["Biking/v_Biking_g01_c01.avi"] == "val"
    assert all(set(parse_folds(r["folds"])) == {1, 3} for r in rows)
    single, _ = split_rows("ucf101", tmp_path / "ucf", (2,))
    assert all("folds" not in r for r in single)  # one split: the contract as before

    with zipfile.ZipFile(tmp_path / "hmdb.zip", "w") as zf:
        for cls in ("pushup", "ride_bike"):
            for k, tags in HMDB_TAGS.items():
                zf.writestr(f"testTrainMulti_7030_splits/{cls}_test_split{k}.txt",
                            "".join(f"{v}.avi {t} \n" for v, t in tags.items()))
    zipfile.ZipFile(tmp_path / "hmdb.zip").extractall(tmp_path / "hmdb")
    rows, got = split_rows("hmdb51", tmp_path / "hmdb", (1, 2, 3))
    assert got == ["pushup", "ride_bike"] and len(rows) == 6
    role = {0: "unused", 1: "train", 2: "val"}
    for row in rows:
        video = row["path"].split("/")[1][0]
        assert parse_folds(row["folds"]) == {k: role[HMDB_TAGS[k][video]] for k in (1, 2, 3)}, row


def test_public_split_param_takes_a_split_a_list_or_all():
    from fourtier.config.data import dataset_spec
    from fourtier.errors import ParamsError

    assert dataset_spec("u", {"type": "ucf101"}).splits == (1,)
    assert dataset_spec("u", {"type": "ucf101", "split": "all"}).splits == (1, 2, 3)
    assert dataset_spec("h", {"type": "hmdb51", "split": [3, 2]}).splits == (2, 3)
    for bad in (4, [1, 1], [], "every", [0, 2]):
        with pytest.raises(ParamsError, match="official split"):
            dataset_spec("u", {"type": "ucf101", "split": bad})
