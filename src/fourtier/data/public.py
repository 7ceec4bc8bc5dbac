"""Public benchmarks with official archives and split files: UCF-101 and HMDB51 (three splits each).

download: fetch the video archive and the split archive (resumable, verified when a checksum or size is
pinned in params, retried), extract them safely, read the chosen official split, then validate and normalise
every listed video through the folder ingest (fourtier.data.folder.ingest). With several splits (`split: all`
or a list) every video any of them lists is ingested once, with its role in each (`split_rows`). The manifest accounts for every
video the split lists: expected, present, missing (with ids) and unreadable, per split and class. The class
index is the dataset's own order (UCF-101's classInd.txt; HMDB51 alphabetical), written to classes.txt.

Archives and extracted videos stay in the download cache (datasets.<name>.cache_dir), outside the DVC
workspace; only the normalised videos become the DVC output.
"""
from __future__ import annotations

from pathlib import Path

from fourtier.data.contract import UNUSED, format_folds, sha256_file
from fourtier.data.fetch import extract_once, fetch
from fourtier.data.folder import ingest
from fourtier.errors import DataError

VERSION = "public-1"
# The official locations (paper §4.1). Sizes are the publishers' figures; no official checksums are published,
# so the sha256 of what was downloaded is recorded in the manifest (pin it with archive_sha256 to enforce it).
SOURCES = {
    "ucf101": {"archive_url": "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar",
               "splits_url": "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"},
    "hmdb51": {"archive_url": "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar",
               "splits_url": "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"},
}


def _one(root: Path, pattern: str, what: str) -> Path:
    found = sorted(root.rglob(pattern))
    if not found:
        raise DataError(f"{root}: no {pattern} found ({what}); is the split archive extracted there?")
    return found[0]


def ucf101_rows(split_dir: Path, split: int) -> tuple[list[dict], list[str]]:
    """ucfTrainTestlist/: classInd.txt ('1 ApplyEyeMakeup'), trainlist0N.txt ('Class/v_x.avi 1'),
    testlist0N.txt ('Class/v_x.avi'). The class order is classInd's, the order UCF-101 checkpoints use."""
    index = _one(split_dir, "classInd.txt", "the UCF-101 class index")
    pairs = [line.split() for line in index.read_text().splitlines() if line.strip()]
    classes = [name for _, name in sorted(pairs, key=lambda p: int(p[0]))]
    rows = []
    for split_name, pattern in (("train", f"trainlist0{split}.txt"), ("val", f"testlist0{split}.txt")):
        for line in _one(split_dir, pattern, f"UCF-101 split {split}").read_text().splitlines():
            if not line.strip():
                continue
            path = line.split()[0]
            label = path.split("/")[0]
            if label not in classes:
                raise DataError(f"{pattern}: class {label!r} of {path!r} is not in classInd.txt")
            rows.append({"path": path, "label": label, "split": split_name})
    return rows, classes


def hmdb51_rows(split_dir: Path, split: int) -> tuple[list[dict], list[str]]:
    """testTrainMulti_7030_splits/<class>_test_split<N>.txt, lines '<video>.avi <tag>': 1 train, 2 test,
    0 not used in this split. Classes in alphabetical order (the usual HMDB51 index)."""
    suffix = f"_test_split{split}.txt"
    files = sorted(split_dir.rglob(f"*{suffix}"))
    if not files:
        raise DataError(f"{split_dir}: no *{suffix} files; is test_train_splits.rar extracted there?")
    rows, classes = [], []
    for path in files:
        label = path.name[:-len(suffix)]
        classes.append(label)
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[1] not in "012":
                if line.strip():
                    raise DataError(f"{path}: cannot read line {line!r} (expected '<video> <0|1|2>')")
                continue
            if parts[1] != "0":
                rows.append({"path": f"{label}/{parts[0]}", "label": label,
                             "split": "train" if parts[1] == "1" else "val"})
    return rows, sorted(classes)


ROWS = {"ucf101": ucf101_rows, "hmdb51": hmdb51_rows}


def split_rows(kind: str, split_dir: Path, splits: tuple[int, ...]) -> tuple[list[dict], list[str]]:
    """The rows of one official split, or of several merged: every video any of them lists, once, with its role
    in each (`folds`, '1:train 2:val 3:unused'; fourtier.data.contract) and in the first as its `split`. The
    videos are the same in every split, only their roles change, so they are ingested and their m computed once."""
    splits = tuple(sorted(splits))  # the first is the lowest, as FeatureSource.fold_ids orders them
    if len(splits) == 1:
        return ROWS[kind](split_dir, splits[0])
    merged: dict[str, dict] = {}
    classes = None
    for k in splits:
        rows, these = ROWS[kind](split_dir, k)
        if classes is not None and these != classes:
            raise DataError(f"{kind} split {k} has other classes than split {splits[0]}: "
                            f"{sorted(set(these) ^ set(classes))[:5]}")
        classes = these
        for row in rows:
            entry = merged.setdefault(row["path"], {"path": row["path"], "label": row["label"], "roles": {}})
            if entry["label"] != row["label"]:
                raise DataError(f"{kind}: {row['path']!r} is {entry['label']!r} in one split and {row['label']!r} "
                                f"in split {k}")
            entry["roles"][k] = row["split"]
    out = []
    for entry in merged.values():
        roles = {k: entry["roles"].get(k, UNUSED) for k in splits}
        out.append({"path": entry["path"], "label": entry["label"], "split": roles[splits[0]],
                    "folds": format_folds(roles)})
    return out, classes


def _video_root(videos: Path, rows: list[dict]) -> Path:
    """The folder under which the split files' relative paths ('Class/file.avi') resolve."""
    first = rows[0]["path"].split("/")[0]
    for candidate in [videos, *sorted(p for p in videos.rglob("*") if p.is_dir())]:
        if (candidate / first).is_dir():
            return candidate
    raise DataError(f"{videos}: no folder {first!r} after extraction; the archive does not have the layout the "
                    "split files describe")


def download(spec, out_dir: Path, workers: int) -> dict:
    urls = {**SOURCES[spec.kind], **{k: v for k, v in (("archive_url", spec.archive_url),
                                                         ("splits_url", spec.splits_url)) if v}}
    cache = spec.cache_dir / spec.kind
    archive = fetch(urls["archive_url"], cache / Path(urls["archive_url"]).name, spec.archive_sha256 or None,
                    spec.archive_size or None)
    splits_archive = fetch(urls["splits_url"], cache / Path(urls["splits_url"]).name)
    extract_once(splits_archive, cache / "splits")
    extract_once(archive, cache / "videos")
    rows, classes = split_rows(spec.kind, cache / "splits", spec.splits)
    root = _video_root(cache / "videos", rows)
    source = {"kind": spec.kind, "version": VERSION, "split": spec.split, **urls,
              "archive_sha256": sha256_file(archive), "splits_sha256": sha256_file(splits_archive),
              "short_side": spec.short_side}
    manifest = ingest(spec.name, root, rows, classes, spec.short_side, Path(out_dir), workers, source)
    missing = len(manifest["missing_ids"])
    if missing:
        print(f"{spec.name}: {missing} of {manifest['expected']} videos of split {spec.split} are not in the "
              f"archive; their ids are in manifest.json (missing_ids)")
    return manifest
