"""The `download` output contract, shared by every dataset kind.

data/raw/<ds>/
  videos/...         the videos; above download.shard_above clips, shards/shard-NNNNN.zip instead (`pack_videos`)
  annotations.csv    video_id, path (relative to the dataset folder, or shards/shard-NNNNN.zip:videos/<file> for a
                     video in a shard: a location of fourtier.data.store), label, split; a dataset run on several
                     official splits (UCF-101, HMDB51 with split: all) adds `folds`, the clip's role in each
                     ('1:train 2:val 3:unused'), and its `split` is its role in the first of them
  classes.txt        line i = class i (the class index map, versioned with the data)
  manifest.json      counts per split and class, skipped items with reasons, source, version, checksums
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from fourtier.data.store import ItemWriter, open_item
from fourtier.errors import DataError

ANNOTATION_COLUMNS = ("video_id", "path", "label", "split")
SPLITS = ("train", "val", "test")
UNUSED = "unused"  # a clip that an official split leaves out (HMDB51's tag 0)


@dataclass(frozen=True, slots=True)  # slots: one per clip, 10^6 of them at K710's size
class Annotation:
    video_id: str
    path: str
    label: str
    split: str
    folds: str = ""  # '1:train 2:val 3:unused' for a dataset run on several official splits, else ""


def parse_folds(folds: str) -> dict[int, str]:
    """'1:train 2:val 3:unused' -> {1: 'train', 2: 'val', 3: 'unused'}."""
    return {int(k): role for k, role in (part.split(":") for part in folds.split())}


def format_folds(roles: dict[int, str]) -> str:
    return " ".join(f"{k}:{roles[k]}" for k in sorted(roles))


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return _sha256(fh)


def _sha256(fh) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_item(ds_dir: Path, location: str) -> str:
    """sha256 of a video's bytes, in a file or in a shard."""
    with open_item(ds_dir, location) as fh:
        return _sha256(fh)


def write_dataset(out_dir: Path, rows: list[Annotation], classes: list[str], source: dict,
                  skipped: list[dict], extra: dict | None = None) -> dict:
    """Write annotations.csv, classes.txt and manifest.json; returns the manifest."""
    if not rows:
        reasons = "; ".join(f"{s['item']}: {s['reason']}" for s in skipped[:5])
        raise DataError(f"dataset {out_dir.name!r} has no usable videos" + (f" (skipped: {reasons})" if reasons else ""))
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise DataError(f"labels not in classes.txt: {unknown[:5]}")
    _write_annotations(out_dir, rows)
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    counts: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(Counter((r.split, r.label) for r in rows).items()):
        counts.setdefault(split, {})[label] = n
    manifest = {
        "dataset": out_dir.name,
        "source": source,
        "num_videos": len(rows),
        "num_classes": len(classes),
        "counts": counts,
        "skipped": skipped,
        "checksums": {r.path: sha256_item(out_dir, r.path) for r in rows},
        **(extra or {}),
    }
    if any(r.folds for r in rows):  # clips per role in each official split
        per_fold: dict[str, dict[str, int]] = {}
        for r in rows:
            for k, role in parse_folds(r.folds).items():
                per_fold.setdefault(str(k), {}).setdefault(role, 0)
                per_fold[str(k)][role] += 1
        manifest["folds"] = {k: dict(sorted(v.items())) for k, v in sorted(per_fold.items())}
    _write_manifest(out_dir / "manifest.json", manifest)
    return manifest


def _write_manifest(path: Path, manifest: dict) -> None:
    # json.dump streams its chunks to the file: the same bytes as json.dumps without the whole text in memory
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")


def _write_annotations(out_dir: Path, rows: list[Annotation]) -> None:
    folds = any(r.folds for r in rows)  # the column only where a dataset has folds: other files keep their bytes
    with open(out_dir / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANNOTATION_COLUMNS + (("folds",) if folds else ()))
        for r in rows:
            writer.writerow([r.video_id, r.path, r.label, r.split] + ([r.folds] if folds else []))


def prune_videos(ds_dir: Path, listed: set[str] | None = None) -> int:
    """Delete files under videos/ that the annotations do not list (`listed`: their paths; default those of
    annotations.csv): half-written files of a killed run, or clips of inputs that have changed since. Empty
    folders go too. Returns how many files went."""
    listed = {r.path for r in read_annotations(ds_dir)} if listed is None else listed
    gone = 0
    videos = Path(ds_dir) / "videos"
    for path in sorted(videos.rglob("*"), reverse=True) if videos.exists() else []:
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.relative_to(ds_dir).as_posix() not in listed:
            path.unlink()
            gone += 1
    if videos.exists() and not any(videos.iterdir()):
        videos.rmdir()
    return gone


def pack_videos(ds_dir: Path, shard_above: int, shard_size: int) -> int:
    """Above `shard_above` clips, move the videos into zip shards of `shard_size` clips (stored members, in
    annotation order), so DVC hashes, checks and pushes a few large files instead of one per clip. The
    annotations' paths become the members' locations (shards/shard-00000.zip:videos/<file>) and manifest.json's
    checksums follow them (the bytes are the same). Each shard is whole on disk before its clips' files are
    deleted: the disk holds at most one shard twice. Returns the number of shards (0: left as files)."""
    from tqdm import tqdm

    ds_dir = Path(ds_dir)
    rows = read_annotations(ds_dir)
    if len(rows) <= shard_above:
        return 0
    manifest_path = ds_dir / "manifest.json"
    with open(manifest_path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    old = manifest["checksums"]
    checksums = manifest["checksums"] = {}  # in the old one's place: the new locations', moved one by one
    writer = ItemWriter(ds_dir, len(rows), shard_above, shard_size)
    with tqdm(total=len(rows), desc=f"shard {ds_dir.name}", unit="clip", dynamic_ncols=True, mininterval=1.0) as bar:
        for start in range(0, len(rows), shard_size):
            files = [r.path for r in rows[start:start + shard_size]]
            for j, file in enumerate(files, start):  # rows are replaced in place: one list, not two
                rows[j] = replace(rows[j], path=writer.put_file(file, ds_dir / file))
                checksums[rows[j].path] = old.pop(file)
                bar.update()
            writer.close()  # the shard is complete before its clips' files go
            for file in files:
                (ds_dir / file).unlink()
    _write_annotations(ds_dir, rows)
    manifest["shards"] = {"clips_per_shard": shard_size, "count": -(-len(rows) // shard_size)}
    _write_manifest(manifest_path, manifest)
    prune_videos(ds_dir)
    return manifest["shards"]["count"]


def read_annotations(ds_dir: Path) -> list[Annotation]:
    path = Path(ds_dir) / "annotations.csv"
    if not path.exists():
        raise DataError(f"{path} not found: run the download stage for this dataset first (dvc repro)")
    with open(path, newline="", encoding="utf-8") as fh:
        # label, split and folds interned: a few distinct strings, not one copy per clip
        return [Annotation(row["video_id"], row["path"], sys.intern(row["label"]), sys.intern(row["split"]),
                           sys.intern(row.get("folds") or "")) for row in csv.DictReader(fh)]


def read_classes(ds_dir: Path) -> list[str]:
    return Path(ds_dir, "classes.txt").read_text(encoding="utf-8").splitlines()
