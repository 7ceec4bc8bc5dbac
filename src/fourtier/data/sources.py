"""Fingerprints of what a dataset's `download` reads from outside the workspace.

DVC hashes only paths that dvc.yaml names, and a stage's deps cannot depend on which kind of dataset a name
is. So the datasets that read files from outside (`reads_outside` in fourtier.config.data) are listed under `watch:`, and the
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
from fourtier.data.registry import module_of
from fourtier.errors import ParamsError


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
    if not spec.reads_outside:
        return _dumps({"kind": spec.kind})
    try:
        return paths.watched(name).read_text()
    except FileNotFoundError:
        raise ParamsError(f"dataset {name!r} ({spec.kind}) reads files from outside the workspace, and "
                          f"{paths.watched(name)} is missing: list it under 'watch:' in params.yaml and run "
                          "`dvc repro`, which fingerprints its files first") from None


def fingerprint(spec) -> dict:
    """The JSON that stages/watch.py writes for a kind that reads outside the workspace: what identifies its
    label files and a digest of every video it lists, both as its module says (`watched`)."""
    if not spec.reads_outside:
        raise ValueError(f"{spec.kind} datasets read nothing from outside the workspace")
    identity, files = module_of(spec).watched(spec)
    return {"kind": spec.kind, **identity, **_files_digest(files)}


def fingerprint_text(spec) -> str:
    return _dumps(fingerprint(spec))
