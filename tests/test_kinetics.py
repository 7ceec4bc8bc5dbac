"""Kinetics from a local CVDF-style mirror on 127.0.0.1, and K710's list logic, offline."""
import tarfile
from pathlib import Path

import pytest

from fourtier.config.data import dataset_spec
from fourtier.data.kinetics import clip_name, k710_rows
from fourtier.errors import ParamsError


def _rows(version_rows):
    return [{"youtube_id": y, "clip": clip_name(y, 0, 10), "label": label, "split": split}
            for y, label, split in version_rows]


def test_k710_merges_dedupes_and_keeps_validation_videos_out_of_training():
    lists = {
        "400": {"train": _rows([("a", "abseiling", "train"), ("b", "archery", "train"), ("v6", "archery", "train")]),
                "val": _rows([("v4", "abseiling", "val")])},
        "600": {"train": _rows([("a", "abseiling", "train"), ("c", "arm wrestling", "train")]),  # a: duplicate
                "val": _rows([("v6", "archery", "val")])},  # v6 is K400 train but K600 val
        "700": {"train": _rows([("v4", "abseiling", "train"), ("d", "baking cookies", "train")]),  # v4: K400 val
                "val": _rows([("v4", "abseiling", "val"), ("v7", "baking cookies", "val")])},
    }
    rows, classes = k710_rows(lists)
    train = sorted(r["youtube_id"] for r in rows if r["split"] == "train")
    val = sorted(r["youtube_id"] for r in rows if r["split"] == "val")
    assert train == ["a", "b", "c", "d"]  # no duplicate, no validation video
    assert val == ["v4", "v6", "v7"]  # each once
    assert classes == ["abseiling", "archery", "arm wrestling", "baking cookies"]


def test_kinetics_params_are_checked():
    with pytest.raises(ParamsError, match="'datasets.k.version' is '500'"):
        dataset_spec("k", {"type": "kinetics", "version": 500})
    with pytest.raises(ParamsError, match=r"'datasets.k.splits\[0\]' is 'test'"):
        dataset_spec("k", {"type": "kinetics", "splits": ["test"]})
    spec = dataset_spec("k400", {"type": "kinetics", "version": 400, "parts": 2})
    assert spec.version == "400" and spec.splits == ("train", "val") and spec.parts == 2 and spec.short_side == 320


def test_kinetics_from_a_local_mirror(tmp_path):
    """Path lists, two tar.gz parts per split and the annotation CSVs, as the CVDF lays them out. One annotated
    clip is in no archive: the manifest reports it missing by its clip name."""
    from helpers import index_frames, served_directory, write_video

    from fourtier.data.registry import download

    www = tmp_path / "www"
    with served_directory(www) as url:
        clips = {"train": [("yt1", "abseiling"), ("yt2", "archery"), ("yt3", "archery")],
                 "val": [("yt4", "abseiling"), ("yt5", "archery")]}
        for split, items in clips.items():
            (www / "400" / split).mkdir(parents=True)
            (www / "400" / "annotations").mkdir(parents=True, exist_ok=True)
            lines = ["label,youtube_id,time_start,time_end,split"]
            lines += [f"{label},{y},0,10,{split}" for y, label in items]
            lines += ["archery,ytmissing,5,15," + split] if split == "train" else []
            (www / "400" / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")
            parts = []
            for p, group in enumerate([items[:1], items[1:]]):
                src = tmp_path / "build" / split / f"part_{p}"
                src.mkdir(parents=True)
                for y, _ in group:
                    write_video(src / f"{clip_name(y, 0, 10)}.mp4", index_frames(10, 48, 64))
                with tarfile.open(www / "400" / split / f"part_{p}.tar.gz", "w:gz") as tf:
                    tf.add(src, arcname=f"part_{p}")
                parts.append(f"{url}/400/{split}/part_{p}.tar.gz")
            (www / "400" / split / f"k400_{split}_path.txt").write_text("\n".join(parts) + "\n")
        spec = dataset_spec("k400", {"type": "kinetics", "version": 400, "short_side": 32, "base_url": url,
                                      "cache_dir": str(tmp_path / "cache")})
        manifest = download(spec, tmp_path / "raw" / "k400", workers=1)
    assert (tmp_path / "raw/k400/classes.txt").read_text() == "abseiling\narchery\n"
    assert manifest["num_videos"] == 5 and manifest["expected"] == 6
    assert manifest["missing_ids"] == ["ytmissing_000005_000015"]
    assert manifest["accounting"]["train"]["archery"] == {"expected": 3, "present": 2, "missing": 1, "unreadable": 0}
    assert manifest["accounting"]["val"]["abseiling"]["present"] == 1
    ids = (tmp_path / "raw/k400/annotations.csv").read_text()
    assert "yt1_000000_000010,videos/yt1_000000_000010.mp4,abseiling,train" in ids


def _cvdf_version(www, build, url, folder, clips):
    """One version's CVDF layout under www/<folder>: per split an annotation CSV, a path list and one tar.gz
    part per clip."""
    from helpers import index_frames, write_video

    (www / folder / "annotations").mkdir(parents=True, exist_ok=True)
    for split, items in clips.items():
        (www / folder / split).mkdir(parents=True)
        lines = ["label,youtube_id,time_start,time_end,split"] + [f"{label},{y},0,10,{split}" for y, label in items]
        (www / folder / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")
        parts = []
        for p, (y, _) in enumerate(items):
            src = build / folder / split / f"part_{p}"
            src.mkdir(parents=True)
            write_video(src / f"{clip_name(y, 0, 10)}.mp4", index_frames(6, 32, 48))
            with tarfile.open(www / folder / split / f"part_{p}.tar.gz", "w:gz") as tf:
                tf.add(src, arcname=f"part_{p}")
            parts.append(f"{url}/{folder}/{split}/part_{p}.tar.gz")
        (www / folder / split / f"k{folder}_{split}_path.txt").write_text("\n".join(parts) + "\n")


def test_k710_parts_of_three_versions_download_in_parallel(tmp_path):
    """Every part of K400, K600 and K700 in one pool: with download.parallel 3, three archive requests are in
    flight at once (each is held 0.3 s by the server), and the result is the K710 of the merged lists."""
    import functools
    import threading
    import time
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from fourtier.data.registry import download

    in_flight, most = [0], [0]
    lock = threading.Lock()

    class SlowArchives(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if not self.path.endswith(".tar.gz"):
                return super().do_GET()
            with lock:
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
            time.sleep(0.3)
            try:
                return super().do_GET()
            finally:
                with lock:
                    in_flight[0] -= 1

    www = tmp_path / "www"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SlowArchives, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        versions = {"400": {"train": [("a", "abseiling"), ("b", "archery")], "val": [("v1", "archery")]},
                    "600": {"train": [("a", "abseiling"), ("c", "arm wrestling")], "val": [("v2", "abseiling")]},
                    "700_2020": {"train": [("v1", "archery"), ("d", "baking cookies")],
                                 "val": [("v3", "baking cookies")]}}
        for folder, clips in versions.items():
            _cvdf_version(www, tmp_path / "build", url, folder, clips)
        spec = dataset_spec("k710", {"type": "k710", "short_side": 32, "base_url": url,
                                      "cache_dir": str(tmp_path / "cache")})
        manifest = download(spec, tmp_path / "raw" / "k710", workers=1, parallel=3)
    finally:
        httpd.shutdown()
    assert most[0] == 3  # 9 parts, three at a time (one at a time: never more than one in flight)
    assert manifest["num_videos"] == 7 and manifest["skipped"] == []  # a (twice) and v1 (a val clip) once each
    train = {r.split(",")[0] for r in (tmp_path / "raw/k710/annotations.csv").read_text().splitlines() if ",train" in r}
    assert train == {"a_000000_000010", "b_000000_000010", "c_000000_000010", "d_000000_000010"}
    assert not list((tmp_path / "cache").rglob("*.partial"))  # every work folder renamed into place


def test_a_part_that_does_not_unpack_is_named_with_the_fix(tmp_path):
    from fourtier.data.kinetics import fetch_parts
    from fourtier.errors import DataError

    archive = tmp_path / "part_0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(Path(__file__), arcname="part_0/a.mp4")
    archive.write_bytes(archive.read_bytes()[:400])  # whole as far as HTTP knew, but cut: the tar ends early
    with pytest.raises(DataError, match=r"part_0.tar.gz: .*delete it and re-run to download it again"):
        fetch_parts([("http://127.0.0.1:9/part_0.tar.gz", archive, tmp_path / "videos" / "part_0")], parallel=2)
