"""A user's own videos: a directory plus a CSV with columns path, label and (optionally) split.

Each file is validated (does it open, does every frame decode, is it truncated?). Unreadable files are
skipped and listed in manifest.json with the reason; a listed path that is no file (missing, a folder, a broken
symlink, a symlink loop) is skipped as missing, with what it is. The label CSV is read as UTF-8 (an Excel BOM
is ignored). A video's id is its whole path below `root` (folders joined by `__`, only the extension dropped)
as one file name: Unicode is normalised to NFC and letters, digits, marks, symbols and punctuation of any
script are kept, so `日本語.mp4` is `日本語` and `café`/`cafè` stay apart; in ASCII only letters, digits and
`. _ -` are kept; every other run (path separators, `: * ? " < > |`, whitespace, control characters) becomes
`_`. Two rows never share an id or a stored file: a clash (the same file listed twice, `a/b.mp4` next to
`a__b.mp4`, `a?b.mp4` next to `a*b.mp4`, or one name typed in NFC and NFD) is an error naming both rows.
Paths outside `root` (absolute, or leading out with `..`) are read, said on the console and listed in the manifest under
`outside_root`, since moving `root` alone then does not move the dataset. With `short_side` > 0, videos are normalised with
ffmpeg: rotation metadata applied, pixels made square, rescaled so the short side is at most
`short_side` (never upscaled), keeping the aspect ratio. Videos that already conform are never re-encoded: they
are copied as they are, or, when decord (the feature pipeline's reader) cannot open their container (e.g. a WebM
without a duration), their video stream is copied into an MP4 (else Matroska) container (`-c copy`). Only a
conforming clip whose stream decord cannot read in either container is re-encoded; `normalised` in the manifest
counts the stored files that are not the source bytes, `remuxed` those of them that are stream copies.

Ingest resumes after a kill at clip granularity: each finished clip's result (stored file, or skipped with the
reason) is appended as one JSON line to `<out_dir>/.ingest.jsonl`; a re-run into the same out_dir reuses the
results of clips whose stored file is still there (same size) and whose source (path, size, mtime) and short_side
are unchanged, and does the rest. Files are written under a temporary name and renamed when complete, so a
stored file is never half-written. The journal is deleted once the dataset is written.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
import stat
import unicodedata
from itertools import groupby
from pathlib import Path

from fourtier.data.contract import Annotation, SPLITS, prune_videos, write_dataset
from fourtier.errors import DataError, VideoError
from fourtier.runtime.parallel import map_progress
from fourtier.video import media

VERSION = "folder-1"


def read_label_csv(csv_path: Path) -> list[dict]:
    if not csv_path.is_file():
        raise DataError(f"label CSV not found: {csv_path} (set datasets.<name>.csv in params.yaml)")
    data = csv_path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{csv_path} is UTF-16 text; save it as UTF-8 (in Excel: 'CSV UTF-8 (Comma delimited)')")
    try:
        text = data.decode("utf-8-sig")  # utf-8-sig: the BOM Excel writes is not part of the first column's name
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{csv_path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the CSV as UTF-8 "
                        "(in Excel: 'CSV UTF-8 (Comma delimited)')") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = {"path", "label"} - set(columns)
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}; expected a header "
                            f"'path,label[,split]', found {columns}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except csv.Error as exc:
        raise DataError(f"{csv_path}:{reader.line_num}: not a readable CSV line ({exc}); fix or remove it") from None
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows")
    return rows


def listed_file(root: Path, path: str) -> Path:
    """The file a CSV row names: relative to root, or absolute (pathlib keeps an absolute path as it is).
    download reads it and the sources fingerprint (fourtier.data.sources) stats it: one rule for both."""
    return Path(root) / path


def watched(spec) -> tuple[dict, list[Path]]:
    """What identifies the label file, and the videos it lists (fourtier.data.sources fingerprints them)."""
    from fourtier.data.contract import sha256_file

    csv_path = label_csv(spec)
    files = [listed_file(spec.root, r["path"]) for r in read_label_csv(csv_path)]
    return {"csv": str(csv_path), "csv_sha256": sha256_file(csv_path)}, files


def label_csv(spec) -> Path:
    """A folder dataset's label CSV: `csv` is relative to `root` unless absolute."""
    return listed_file(spec.root, str(spec.csv))


_ASCII_KEPT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_ID_BYTES = 240  # file names are at most 255 bytes (ext4, APFS, NTFS); room for the extension


def _kept(c: str) -> bool:
    """May c stay in an id? ASCII: letters, digits and . _ - (the ids of ASCII names never change). Beyond ASCII:
    letters, marks, numbers, punctuation and symbols of any script; never separators (whitespace, line breaks)
    or control, format, private-use and unassigned characters."""
    return c in _ASCII_KEPT if c.isascii() else unicodedata.category(c)[0] in "LMNPS"


def video_id_for(rel_path: str, where: str = "") -> str:
    """The whole path without its extension, as one safe file name: 'a/2021.05.03_x.mp4' -> 'a__2021.05.03_x',
    '日本語.mp4' -> '日本語'. NFC first, so a name typed precomposed or decomposed gives one id; every run of
    characters that is not kept becomes '_'. Distinct names can still meet ('a?b', 'a*b'): ingest reports that."""
    path = unicodedata.normalize("NFC", rel_path)
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    name = parts[-1] if parts else ""
    if parts:
        parts[-1] = name[:name.rindex(".")] if "." in name else name
    joined = "__".join(parts)
    vid = "".join("".join(run) if kept else "_" for kept, run in groupby(joined, _kept)).strip("_.")
    if not parts or not parts[-1].strip("._"):  # '.mp4' is an extension with no name
        raise DataError(f"{where or rel_path}: {rel_path!r} has no file name before its extension; "
                        "rename the file (e.g. clip.mp4) and update the CSV")
    if not vid:
        raise DataError(f"{where or rel_path}: {rel_path!r} has no letter or digit to make a video id of (only "
                        "spaces, punctuation or control characters); rename the file (e.g. clip.mp4) and update "
                        "the CSV")
    if len(vid.encode("utf-8")) > MAX_ID_BYTES:
        size = len(vid.encode("utf-8"))
        raise DataError(f"{where or rel_path}: the video id of {rel_path!r} would be {size} bytes of UTF-8, too "
                        f"long for a file name (at most {MAX_ID_BYTES}); shorten the file or folder names and update "
                        "the CSV")
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


def normalised_size(stream: media.VideoStream, short_side: int) -> tuple[int, int] | None:
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


PARTIAL_PREFIX = ".partial-"  # a file being written; no video id starts with '.', so no stored file does either


def _partial(dst: Path) -> Path:
    return dst.with_name(PARTIAL_PREFIX + dst.name)


def _store_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, _partial(dst))
    os.replace(_partial(dst), dst)  # complete or absent, never half-written


def _remux(src: Path, dst_stem: Path) -> Path | None:
    """The video stream copied as it is (no re-encode) into a container decord opens: MP4, else Matroska (which
    takes any codec). None when decord opens neither. The stream is the one ffmpeg and decord pick by default."""
    for suffix in (".mp4", ".mkv"):
        dst = dst_stem.parent / stored_name(dst_stem.name, suffix)
        partial = _partial(dst)
        proc = media.run_ffmpeg(["-y", "-i", str(src), "-an", "-sn", "-dn", "-c:v", "copy", "-map_metadata", "-1",
                                 str(partial)])
        if proc.returncode == 0 and decord_opens(partial):
            os.replace(partial, dst)
            return dst
        partial.unlink(missing_ok=True)
    return None


def ingest_one(job) -> dict:
    """(src, dst_stem, short_side) -> {ok, file, normalised, remuxed} or {ok: False, reason}."""
    src, dst_stem, short_side = job
    try:
        info = media.probe(src)
        problem = media.readability_problem(info, media.decode_check(src))
        if problem:
            return {"ok": False, "reason": problem}
        target = normalised_size(info.main_stream, short_side) if short_side else None
        if target is None:  # conforming: never re-encoded when a copy or a stream copy will do
            if decord_opens(src):
                dst = dst_stem.parent / stored_name(dst_stem.name, src.suffix.lower())
                _store_copy(src, dst)
                return {"ok": True, "file": dst.name, "normalised": False, "remuxed": False}
            # only the container is the problem for decord, the feature pipeline's reader (e.g. a WebM
            # without a duration): the same coded frames in another container
            dst = _remux(src, dst_stem)
            if dst is not None:
                return {"ok": True, "file": dst.name, "normalised": True, "remuxed": True}
        # re-encoded: to normalise, or (last resort) because decord reads the stream in no container; the size
        # is then kept as displayed
        dst = dst_stem.parent / stored_name(dst_stem.name, ".mp4")
        w, h = target or [max(2, round(v / 2) * 2) for v in info.main_stream.display_size]  # yuv420p: even
        proc = media.run_ffmpeg(["-y", "-i", str(src), "-an", "-sn", "-dn", "-vf", f"scale={w}:{h},setsar=1",
                                 "-c:v", "libx264", "-crf", "18", "-preset", "fast", "-pix_fmt", "yuv420p",
                                 "-threads", "1", "-map_metadata", "-1", str(_partial(dst))])
        if proc.returncode != 0:
            _partial(dst).unlink(missing_ok=True)
            return {"ok": False, "reason": "normalisation failed: " + proc.stderr.decode(errors="replace").strip()[-200:]}
        os.replace(_partial(dst), dst)
        return {"ok": True, "file": dst.name, "normalised": True, "remuxed": False}
    except VideoError as exc:
        return {"ok": False, "reason": str(exc)}


JOURNAL = ".ingest.jsonl"
JOURNAL_VERSION = 1  # bump when ingest_one stores something else for the same input: old results are then redone


def source_key(src: Path, short_side: int) -> list:
    """What a journaled result depends on: the source file (path, size, mtime) and the target short side."""
    st = os.stat(src)
    return [os.path.abspath(src), st.st_size, st.st_mtime_ns, short_side]


class IngestJournal:
    """Results of finished clips in out_dir/.ingest.jsonl, one JSON line per clip, appended as each one finishes
    (one write per line, so a kill cuts at most the last line, which the next run drops)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}  # video id -> its last journaled entry
        if path.exists():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a line cut short by a kill
                os.truncate(path, end)
            for line in data[:end].splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("v") == JOURNAL_VERSION:
                    self.entries[entry["id"]] = entry
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def reusable(self, vid: str, key: list, videos: Path) -> dict | None:
        """The journaled result of vid if its source and short_side are unchanged and its stored file is intact."""
        entry = self.entries.get(vid)
        if entry is None or entry["source"] != key:
            return None
        result = entry["result"]
        if result["ok"]:
            try:
                if os.stat(videos / result["file"]).st_size != entry["stored_size"]:
                    return None
            except OSError:
                return None
        return result

    def append(self, vid: str, key: list, result: dict, videos: Path) -> None:
        stored = os.stat(videos / result["file"]).st_size if result["ok"] else None
        line = json.dumps({"v": JOURNAL_VERSION, "id": vid, "source": key, "result": result, "stored_size": stored},
                          ensure_ascii=False) + "\n"
        os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        os.close(self._fd)


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
    path), folds (the roles in several official splits; fourtier.data.contract) and where (for messages). The manifest accounts for every listed video: expected, present, missing
    and unreadable per split and class, with the ids of the missing ones. A re-run into the out_dir of a killed
    run resumes it (the journal, module doc); files in videos/ that no annotation names are removed."""
    videos = out_dir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    jobs, meta, seen, outside, missing = [], [], {}, [], []
    for row in rows:
        where = row.get("where", row["path"])
        vid = row.get("video_id") or video_id_for(row["path"], where)
        item = row.get("video_id", row["path"])
        if vid in seen:
            raise DataError(_clash(vid, row["path"], where, *seen[vid]))
        seen[vid] = (row["path"], where)
        src = listed_file(root, row["path"])
        if not _inside(src, root):
            outside.append(row["path"])
        reason = not_a_file(src)
        if reason:
            missing.append({"item": item, "reason": reason, "split": row["split"], "label": row["label"]})
            continue
        jobs.append((src, videos / vid, short_side))
        meta.append((vid, row["label"], row["split"], item, row.get("folds", "")))
    skipped = list(missing)  # no file there: listed first, then the files that did not read
    results = _run_or_resume(name, jobs, meta, workers, out_dir)
    annotations, normalised, remuxed = [], 0, 0
    for (vid, label, split, rel, folds), result in zip(meta, results):
        if not result["ok"]:
            skipped.append({"item": rel, "reason": result["reason"], "split": split, "label": label})
            continue
        normalised += result["normalised"]
        remuxed += result["remuxed"]
        annotations.append(Annotation(vid, f"videos/{result['file']}", label, split, folds))
    prune_videos(out_dir, {a.path for a in annotations})
    accounting: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        entry = accounting.setdefault(row["split"], {}).setdefault(
            row["label"], {"expected": 0, "present": 0, "missing": 0, "unreadable": 0})
        entry["expected"] += 1
    for a in annotations:
        accounting[a.split][a.label]["present"] += 1
    for i, s in enumerate(skipped):
        accounting[s["split"]][s["label"]]["missing" if i < len(missing) else "unreadable"] += 1
    missing_ids = sorted(s["item"] for s in missing)
    if outside:
        print(f"{name}: {len(outside)} listed file(s) lie outside {root} (e.g. {outside[0]!r}); read from there "
              "and listed in manifest.json under outside_root")
    manifest = write_dataset(out_dir, annotations, classes, source, skipped,
                             extra={"normalised": normalised, "remuxed": remuxed, "expected": len(rows),
                                    "accounting": accounting, "missing_ids": missing_ids, "outside_root": outside})
    (out_dir / JOURNAL).unlink(missing_ok=True)  # written: not part of the dataset
    return manifest


def _run_or_resume(name: str, jobs: list, meta: list, workers: int, out_dir: Path) -> list[dict]:
    """ingest_one's result for every job, in order: from the journal where still valid, else computed (and
    journaled as each one finishes)."""
    videos = out_dir / "videos"
    journal = IngestJournal(out_dir / JOURNAL)
    try:
        keys = [source_key(src, short_side) for src, _, short_side in jobs]
        results = [journal.reusable(vid, key, videos) for (vid, *_), key in zip(meta, keys)]
        todo = [i for i, r in enumerate(results) if r is None]
        if len(todo) < len(jobs):
            print(f"ingest {name}: resuming, {len(jobs) - len(todo)} of {len(jobs)} clips already done in {out_dir}")
        computed = map_progress(ingest_one, [jobs[i] for i in todo], workers, desc=f"ingest {name}")
        for i, result in zip(todo, computed):
            journal.append(meta[i][0], keys[i], result, videos)
            results[i] = result
    finally:
        journal.close()
    return results


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(root)))


def _clash(vid: str, path: str, where: str, other_path: str, other_where: str) -> str:
    if path == other_path or os.path.normpath(path) == os.path.normpath(other_path):
        why = "the same file is listed twice; remove the duplicate row"
    elif unicodedata.normalize("NFC", path) == unicodedata.normalize("NFC", other_path):
        why = ("the two names are the same text with accents encoded two ways (Unicode NFC and NFD); "
               "rename one file, or list it once")
    else:
        why = ("ids join folders with '__' and replace spaces, path separators and characters such as "
               ": * ? \" < > | with '_'; rename one file so the names differ in letters or digits")
    return (f"{where}: {path!r} gives the same video id {vid!r} as {other_path!r} ({other_where}): "
            f"each row must name its own file; {why}")


def _symlink_chain(path: Path, limit: int = 40) -> tuple[list[str], bool]:
    """Where the symlink at path leads, link by link, and whether it comes back to a link already passed."""
    chain, passed, p = [], set(), os.path.abspath(path)
    while os.path.islink(p) and len(chain) < limit:
        if p in passed:
            return chain, True
        passed.add(p)
        target = os.readlink(p)
        chain.append(target)
        p = os.path.abspath(os.path.join(os.path.dirname(p), target))
    return chain, len(chain) >= limit


def not_a_file(src: Path) -> str | None:
    """None if src is (or a symlink leads to) a regular file, else what it is, for the manifest's `reason`.
    A missing file keeps the reason 'file not found'."""
    try:
        st = os.stat(src)
    except ValueError:  # os.stat refuses a NUL character before asking the system
        return "the path contains a NUL character; fix the CSV row"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            chain, _ = _symlink_chain(src)
            shown = " -> ".join([str(src), *chain]) if chain else str(src)
            return f"symlink loop: {shown} never reaches a file; point the link at the video file"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(src):
            chain, _ = _symlink_chain(src)
            return (f"broken symlink pointing to {' -> '.join(map(repr, chain))} ({os.path.realpath(src)}), which "
                    "does not exist; restore that file or point the link at the video file")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "file not found"
        return f"cannot be opened: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a video file; list the video files inside it"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, pipe or socket); list a video file"
    return None
