"""Fingerprints of what a dataset's `download` reads from outside the workspace.

DVC hashes only paths that dvc.yaml names, and a stage's deps cannot depend on which kind of dataset a name
is. So the datasets that read files from outside (params.OUTSIDE_KINDS) are listed under `watch:`, and the
`watch` stage (always run, about a second) writes one small JSON for each: the label CSV's sha256 and every
listed video's size and modification time, folded into one digest. The `sources` stage copies it to
data/sources/<ds>.json, which `download` depends on: editing a label, adding a row or replacing a video
re-runs it; when nothing changed the file keeps its bytes and nothing downstream runs. Videos are compared by
size and modification time, as make and DVC's own state do; hashing 10^6 videos on every `dvc repro` would
cost minutes.

SynthAct is generated from its params; public datasets are fetched from their archive URL (pin
`archive_sha256` to catch a changed archive), so their fingerprint is only their kind.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fourtier import paths
from fourtier.data.contract import sha256_file
from fourtier.data.folder import label_csv, listed_file, read_label_csv
from fourtier.errors import ParamsError
from fourtier.params import OUTSIDE_KINDS


def _files_digest(paths: list[Path]) -> dict:
    digest, missing = hashlib.sha256(), 0
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except (OSError, ValueError):  # ValueError: a NUL character in a listed path
            missing += 1
            digest.update(f"{path}\tmissing\n".encode())
    return {"files": len(paths), "files_missing": missing, "files_digest": digest.hexdigest()}


def _dumps(fp: dict) -> str:
    return json.dumps(fp, indent=1, sort_keys=True) + "\n"


def sources_text(name: str, spec) -> str:
    """data/sources/<name>.json's text: the kind alone, or the `watch` stage's fingerprint of the files."""
    if spec.kind not in OUTSIDE_KINDS:
        return _dumps({"kind": spec.kind})
    try:
        return paths.watched(name).read_text()
    except FileNotFoundError:
        raise ParamsError(f"dataset {name!r} ({spec.kind}) reads files from outside the workspace, and "
                          f"{paths.watched(name)} is missing: list it under 'watch:' in params.yaml and run "
                          "`dvc repro`, which fingerprints its files first") from None


def fingerprint(spec) -> dict:
    """The JSON that stages/watch.py writes: for a kind in OUTSIDE_KINDS, what it reads from outside."""
    if spec.kind == "folder":
        csv_path = label_csv(spec)
        rows = read_label_csv(csv_path)
        paths = [listed_file(spec.root, r["path"]) for r in rows]
        return {"kind": "folder", "csv": str(csv_path), "csv_sha256": sha256_file(csv_path), **_files_digest(paths)}
    if spec.kind == "ssv2":
        from fourtier.data.ssv2 import EXPECTED, ssv2_rows

        rows, _ = ssv2_rows(spec.root)
        labels = {name: sha256_file(spec.root / name) for name in EXPECTED[1:]}
        return {"kind": "ssv2", "labels_sha256": labels, **_files_digest([listed_file(spec.root, r["path"]) for r in rows])}
    raise ValueError(f"{spec.kind} datasets read nothing from outside the workspace")


def fingerprint_text(spec) -> str:
    return _dumps(fingerprint(spec))
