"""Something-Something V2 from a local copy: its licence requires a manual download, so this ingests it.

Expected under `root` (the layout of the official download, after extracting its zip parts):
    20bn-something-something-v2/<id>.webm     the 220,847 videos
    labels/labels.json                        {"Approaching something with your camera": "0", ...}: 174 classes
    labels/train.json, labels/validation.json [{"id": "78687", "template": "Holding [something] next to ...", ...}]
A video's class is its template without the brackets; the class order is labels.json's indices. The official
validation set becomes `val` (the test set has no public labels).
"""
from __future__ import annotations

import json
from pathlib import Path

from fourtier.data.folder import ingest
from fourtier.errors import DataError

VERSION = "ssv2-1"
EXPECTED = ("20bn-something-something-v2", "labels/labels.json", "labels/train.json", "labels/validation.json")


def ssv2_rows(root: Path) -> tuple[list[dict], list[str]]:
    missing = [p for p in EXPECTED if not (root / p).exists()]
    if missing:
        raise DataError(f"SSv2 at {root} is missing {', '.join(missing)}. Download it by hand (its licence requires "
                        "it) from Qualcomm's Something-Something V2 page, extract the video zip parts into "
                        f"{root / EXPECTED[0]} and the labels zip into {root / 'labels'}, then re-run")
    index = json.loads((root / "labels/labels.json").read_text())
    classes = [name for name, _ in sorted(index.items(), key=lambda kv: int(kv[1]))]
    rows = []
    for split, file in (("train", "train.json"), ("val", "validation.json")):
        for item in json.loads((root / "labels" / file).read_text()):
            label = item["template"].replace("[", "").replace("]", "")
            if label not in index:
                raise DataError(f"labels/{file}: video {item['id']} has template {item['template']!r}, whose class "
                                f"{label!r} is not in labels.json")
            rows.append({"path": f"{EXPECTED[0]}/{item['id']}.webm", "video_id": str(item["id"]), "label": label,
                         "split": split})
    return rows, classes


def watched(spec) -> tuple[dict, list[Path]]:
    """What identifies the label files, and the videos they list (fourtier.data.sources fingerprints them)."""
    from fourtier.data.contract import sha256_file
    from fourtier.data.folder import listed_file

    rows, _ = ssv2_rows(spec.root)
    labels = {name: sha256_file(spec.root / name) for name in EXPECTED[1:]}
    return {"labels_sha256": labels}, [listed_file(spec.root, r["path"]) for r in rows]


def download(spec, out_dir: Path, workers: int) -> dict:
    rows, classes = ssv2_rows(spec.root)
    source = {"kind": "ssv2", "version": VERSION, "root": str(spec.root), "short_side": spec.short_side}
    return ingest(spec.name, spec.root, rows, classes, spec.short_side, Path(out_dir), workers, source)
