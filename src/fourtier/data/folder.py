"""A user's own videos: a directory plus a CSV with columns path, label and (optionally) split.

Each file is validated (does it open, does every frame decode, is it truncated?). Unreadable files are
skipped and listed in manifest.json with the reason. A video's id is its whole path below `root` (folders
joined by `__`, only the extension dropped), so two rows never share an id or a stored file; a clash (the
same file listed twice, or `a/b.mp4` next to `a__b.mp4`) is an error naming both rows. Paths outside `root`
(absolute, or leading out with `..`) are read, said on the console and listed in the manifest under
`outside_root`, since moving `root` alone then does not move the dataset. With `short_side` > 0, videos are normalised with
ffmpeg: rotation metadata applied, pixels made square, rescaled so the short side is at most
`short_side` (never upscaled), keeping the aspect ratio. Videos that already conform are copied as they are.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
from pathlib import Path

from fourtier.data.contract import SPLITS, Annotation, write_dataset
from fourtier.errors import DataError, VideoError
from fourtier.parallel import map_progress
from fourtier import video

VERSION = "folder-1"


def read_label_csv(csv_path: Path) -> list[dict]:
    if not csv_path.is_file():
        raise DataError(f"label CSV not found: {csv_path} (set datasets.<name>.csv in params.yaml)")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = {"path", "label"} - set(columns)
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}; expected a header "
                            f"'path,label[,split]', found {columns}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows")
    return rows


def listed_file(root: Path, path: str) -> Path:
    """The file a CSV row names: relative to root, or absolute (pathlib keeps an absolute path as it is).
    download reads it and the sources fingerprint (fourtier.data.sources) stats it: one rule for both."""
    return Path(root) / path


def label_csv(spec) -> Path:
    """A folder dataset's label CSV: `csv` is relative to `root` unless absolute."""
    return listed_file(spec.root, str(spec.csv))


def video_id_for(rel_path: str, where: str = "") -> str:
    """The whole path without its extension, as one safe file name: 'a/2021.05.03_x.mp4' -> 'a__2021.05.03_x'."""
    parts = [p for p in rel_path.replace("\\", "/").split("/") if p not in ("", ".")]
    name = parts[-1] if parts else ""
    if parts:
        parts[-1] = name[:name.rindex(".")] if "." in name else name
    vid = re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(parts)).strip("_.")
    if not vid or not parts[-1].strip("._"):  # '.mp4' is an extension with no name
        raise DataError(f"{where or rel_path}: {rel_path!r} has no file name before its extension; "
                        "rename the file (e.g. clip.mp4) and update the CSV")
    return vid


def stored_name(vid: str, suffix: str) -> str:
    """The stored file: the id plus the extension. Never Path.with_suffix, which would cut an id at its last dot."""
    return vid + suffix


def _split_for(row: dict, seed: int, val_fraction: float, where: str) -> str:
    split = row.get("split", "")
    if split:
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        return split
    # stable across runs and machines: a hash of the path, not a random draw
    h = int(hashlib.sha256(f"{seed}:{row['path']}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def normalised_size(stream: video.VideoStream, short_side: int) -> tuple[int, int] | None:
    """Target (width, height) with square pixels and rotation applied, or None if the video conforms."""
    dw, dh = stream.display_size
    scale = min(1.0, short_side / min(dw, dh))
    if stream.rotation == 0 and stream.sar == 1 and scale == 1.0:
        return None
    even = lambda v: max(2, int(round(v / 2)) * 2)  # noqa: E731 (yuv420p needs even sizes)
    return even(dw * scale), even(dh * scale)


def decord_opens(path: Path) -> bool:
    import decord

    try:
        decord.VideoReader(str(path), num_threads=1)
        return True
    except decord.DECORDError:
        return False


def ingest_one(job) -> dict:
    src, dst_stem, short_side = job
    try:
        info = video.probe(src)
        problem = video.readability_problem(info, video.decode_check(src))
        if problem:
            return {"ok": False, "reason": problem}
        target = normalised_size(info.main_stream, short_side) if short_side else None
        if target is None and decord_opens(src):
            dst = dst_stem.parent / stored_name(dst_stem.name, src.suffix.lower())
            shutil.copyfile(src, dst)
            return {"ok": True, "file": dst.name, "normalised": False}
        # re-encoded: to normalise, or because the feature pipeline's reader (decord) cannot open the
        # container (e.g. WebM without a duration); the size is then kept as displayed
        dst = dst_stem.parent / stored_name(dst_stem.name, ".mp4")
        w, h = target or [max(2, round(v / 2) * 2) for v in info.main_stream.display_size]  # yuv420p: even
        proc = video.run_ffmpeg(["-y", "-i", str(src), "-an", "-sn", "-dn", "-vf", f"scale={w}:{h},setsar=1",
                                 "-c:v", "libx264", "-crf", "18", "-preset", "fast", "-pix_fmt", "yuv420p",
                                 "-threads", "1", "-map_metadata", "-1", str(dst)])
        if proc.returncode != 0:
            return {"ok": False, "reason": "normalisation failed: " + proc.stderr.decode(errors="replace").strip()[-200:]}
        return {"ok": True, "file": dst.name, "normalised": True}
    except VideoError as exc:
        return {"ok": False, "reason": str(exc)}


def download(spec, out_dir, workers: int) -> dict:
    root = spec.root
    if not root.is_dir():
        raise DataError(f"dataset {spec.name!r}: folder not found: {root} (set datasets.{spec.name}.root)")
    csv_path = label_csv(spec)
    rows = read_label_csv(csv_path)
    for line, row in enumerate(rows, start=2):
        if not row.get("label"):
            raise DataError(f"{csv_path}:{line}: empty label for {row.get('path')!r}")
        if any(c in row["label"] for c in "\r\n"):
            # classes.txt has one class per line: a line break would split one class into two
            raise DataError(f"{csv_path}:{line}: the label of {row['path']!r} contains a line break "
                            f"({row['label']!r}); labels must be one line")
        row["split"] = _split_for(row, spec.seed, spec.val_fraction, f"{csv_path}:{line}")
        row["where"] = f"{csv_path}:{line}"
    classes = sorted({r["label"] for r in rows})
    source = {"kind": "folder", "version": VERSION, "root": str(root), "csv": str(csv_path),
              "short_side": spec.short_side}
    return ingest(spec.name, root, rows, classes, spec.short_side, Path(out_dir), workers, source)


def ingest(name: str, root: Path, rows: list[dict], classes: list[str], short_side: int, out_dir: Path,
           workers: int, source: dict) -> dict:
    """Validate (and with short_side > 0 normalise) every listed video into the download contract.

    rows: path (relative to root, or absolute), label, split, and optionally video_id (else derived from the
    path) and where (for messages). The
    manifest accounts for every listed video: expected, present, missing and unreadable per split and class,
    with the ids of the missing ones."""
    videos = out_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    jobs, meta, skipped, seen, outside = [], [], [], {}, []
    for row in rows:
        where = row.get("where", row["path"])
        vid = row.get("video_id") or video_id_for(row["path"], where)
        item = row.get("video_id", row["path"])
        if vid in seen:
            raise DataError(f"{where}: {row['path']!r} gives the same video id as {seen[vid]} ({vid!r}): "
                            "each row must name its own file; remove the duplicate row or rename one file")
        seen[vid] = where
        src = listed_file(root, row["path"])
        if not _inside(src, root):
            outside.append(row["path"])
        if not src.is_file():
            skipped.append({"item": item, "reason": "file not found", "split": row["split"], "label": row["label"]})
            continue
        jobs.append((src, videos / vid, short_side))
        meta.append((vid, row["label"], row["split"], item))
    annotations, normalised = [], 0
    for (vid, label, split, rel), result in zip(meta, map_progress(ingest_one, jobs, workers, desc=f"ingest {name}")):
        if not result["ok"]:
            skipped.append({"item": rel, "reason": result["reason"], "split": split, "label": label})
            continue
        normalised += result["normalised"]
        annotations.append(Annotation(vid, f"videos/{result['file']}", label, split))
    accounting: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        entry = accounting.setdefault(row["split"], {}).setdefault(
            row["label"], {"expected": 0, "present": 0, "missing": 0, "unreadable": 0})
        entry["expected"] += 1
    for a in annotations:
        accounting[a.split][a.label]["present"] += 1
    for s in skipped:
        accounting[s["split"]][s["label"]]["missing" if s["reason"] == "file not found" else "unreadable"] += 1
    missing_ids = sorted(s["item"] for s in skipped if s["reason"] == "file not found")
    if outside:
        print(f"{name}: {len(outside)} listed file(s) lie outside {root} (e.g. {outside[0]!r}); read from there "
              "and listed in manifest.json under outside_root")
    return write_dataset(out_dir, annotations, classes, source, skipped,
                         extra={"normalised": normalised, "expected": len(rows), "accounting": accounting,
                                "missing_ids": missing_ids, "outside_root": outside})


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(root)))
