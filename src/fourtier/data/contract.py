"""The `download` output contract, shared by every dataset kind.

data/raw/<ds>/
  videos/...         the videos
  annotations.csv    video_id, path (relative to the dataset folder), label, split
  classes.txt        line i = class i (the class index map, versioned with the data)
  manifest.json      counts per split and class, skipped items with reasons, source, version, checksums
"""
from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fourtier.errors import DataError

ANNOTATION_COLUMNS = ("video_id", "path", "label", "split")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Annotation:
    video_id: str
    path: str
    label: str
    split: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_dataset(out_dir: Path, rows: list[Annotation], classes: list[str], source: dict,
                  skipped: list[dict], extra: dict | None = None) -> dict:
    """Write annotations.csv, classes.txt and manifest.json; returns the manifest."""
    if not rows:
        reasons = "; ".join(f"{s['item']}: {s['reason']}" for s in skipped[:5])
        raise DataError(f"dataset {out_dir.name!r} has no usable videos" + (f" (skipped: {reasons})" if reasons else ""))
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise DataError(f"labels not in classes.txt: {unknown[:5]}")
    with open(out_dir / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANNOTATION_COLUMNS)
        for r in rows:
            writer.writerow([r.video_id, r.path, r.label, r.split])
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
        "checksums": {r.path: sha256_file(out_dir / r.path) for r in rows},
        **(extra or {}),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_annotations(ds_dir: Path) -> list[Annotation]:
    path = Path(ds_dir) / "annotations.csv"
    if not path.exists():
        raise DataError(f"{path} not found: run the download stage for this dataset first (dvc repro)")
    with open(path, newline="", encoding="utf-8") as fh:
        return [Annotation(**{k: row[k] for k in ANNOTATION_COLUMNS}) for row in csv.DictReader(fh)]


def read_classes(ds_dir: Path) -> list[str]:
    return Path(ds_dir, "classes.txt").read_text(encoding="utf-8").splitlines()
