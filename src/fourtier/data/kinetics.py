"""Kinetics-400/600/700 from the CVDF mirror, and K710 (their union, as UniFormerV2 builds it).

The CVDF hosts each split as many tar.gz parts, listed in `k<version>_<split>_path.txt`, with one annotation
CSV per split (label, youtube_id, time_start, time_end, split). Clips are named
`<youtube_id>_<start:06d>_<end:06d>.mp4`. Parts are downloaded (resumable, retried) and extracted into the
download cache, `parallel` of them at once (`download.parallel` in params.yaml; every part of every split and,
for K710, of every version, share one pool and one progress bar); `parts: N` takes only the first N parts of
each split, for a quick subset. A part that is downloaded and extracted is not fetched again; a killed run
resumes each unfinished download where it stopped and extracts unfinished parts again from the start.

K710: the train and validation lists of K400, K600 and K700 merged by class name, duplicates (same YouTube
id) removed, and every video that is in any of the three validation sets removed from training, so no K710
training clip is a validation clip of K400/600/700. Its classes are the union of the three class lists
(710 names). Its videos come from the three versions' downloads.
"""
from __future__ import annotations

import csv
import tarfile
import threading
import zlib
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from fourtier.data.contract import sha256_file
from fourtier.data.fetch import extract_once, fetch
from fourtier.data.folder import ingest
from fourtier.errors import DataError

VERSION = "kinetics-1"
CVDF = "https://s3.amazonaws.com/kinetics"
FOLDERS = {"400": "400", "600": "600", "700": "700_2020"}
SPLIT_NAMES = {"train": "train", "val": "val"}  # our split name -> CVDF's


def clip_name(youtube_id: str, start: float, end: float) -> str:
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def read_annotations(path: Path, split: str) -> list[dict]:
    """One CVDF annotation CSV -> rows {youtube_id, clip, label, split}."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}; is this a Kinetics annotation CSV?")
        return [{"youtube_id": r["youtube_id"], "clip": clip_name(r["youtube_id"], r["time_start"], r["time_end"]),
                 "label": r["label"].strip(), "split": split} for r in reader]


def k710_rows(lists: dict[str, dict[str, list[dict]]]) -> tuple[list[dict], list[str]]:
    """lists[version][split] = rows of read_annotations. Returns K710's rows and classes (see module doc)."""
    val_ids = {r["youtube_id"] for version in lists.values() for r in version.get("val", [])}
    rows, seen = [], set()
    for split in ("val", "train"):  # validation first: a duplicate keeps its validation role
        for version in sorted(lists):
            for r in lists[version].get(split, []):
                if r["youtube_id"] in seen or (split == "train" and r["youtube_id"] in val_ids):
                    continue
                seen.add(r["youtube_id"])
                rows.append({**r, "version": version})
    classes = sorted({r["label"] for r in rows})
    return rows, classes


def _version_lists(spec, version: str, cache: Path) -> tuple[dict[str, list[dict]], list[tuple[str, Path, Path]]]:
    """Annotations of every split of one version, and its parts as (url, archive file, extraction folder)."""
    folder = FOLDERS[version]
    base = spec.base_url or CVDF
    lists, parts = {}, []
    for split in spec.splits:
        remote = SPLIT_NAMES[split]
        ann = fetch(f"{base}/{folder}/annotations/{remote}.csv", cache / folder / "annotations" / f"{remote}.csv")
        lists[split] = read_annotations(ann, split)
        path_list = fetch(f"{base}/{folder}/{remote}/k{folder}_{remote}_path.txt",
                          cache / folder / f"k{folder}_{remote}_path.txt")
        urls = [u.strip() for u in path_list.read_text().splitlines() if u.strip()]
        for url in urls[:spec.parts or None]:
            name = Path(url).name
            parts.append((url, cache / folder / remote / "archives" / name,
                          cache / folder / remote / "videos" / name.split(".")[0]))
    return lists, parts


def _fetch_part(url: str, archive: Path, dest: Path, cancel: threading.Event) -> None:
    fetch(url, archive, progress=False, cancel=cancel)
    try:
        extract_once(archive, dest)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:  # e.g. a part that does not unpack, a full disk
        raise DataError(f"{archive}: cannot be extracted into {dest} ({exc or type(exc).__name__}); if the disk has "
                        f"room, the archive is damaged: delete it and re-run to download it again from {url}") from None


def fetch_parts(parts: list[tuple[str, Path, Path]], parallel: int) -> None:
    """Download and extract every part, `parallel` at once, with one bar for the parts. The first failure stops
    the downloads still running (they resume on the next run) and is raised."""
    from tqdm import tqdm

    cancel = threading.Event()
    with ThreadPoolExecutor(max(1, parallel)) as pool, \
            tqdm(total=len(parts), desc="kinetics parts", unit="part", dynamic_ncols=True, mininterval=1.0) as bar:
        pending = {pool.submit(_fetch_part, url, archive, dest, cancel) for url, archive, dest in parts}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                bar.update(len(done))
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()
        finally:
            cancel.set()  # on a failure or Ctrl-C; a no-op once every part is done
            for future in pending:
                future.cancel()


def download(spec, out_dir: Path, workers: int, parallel: int = 1) -> dict:
    """workers: processes for the ingest; parallel: parts downloaded and extracted at once."""
    cache = spec.cache_dir / "kinetics"
    versions = ["400", "600", "700"] if spec.kind == "k710" else [spec.version]
    lists, parts = {}, []
    for version in versions:
        lists[version], version_parts = _version_lists(spec, version, cache)
        parts += version_parts
    fetch_parts(parts, parallel)
    files = {video.stem: video for _, _, dest in parts for video in dest.rglob("*.mp4")}  # this run's parts only
    if spec.kind == "k710":
        rows, classes = k710_rows(lists)
    else:
        rows = [r for split in spec.splits for r in lists[spec.version][split]]
        classes = sorted({r["label"] for r in rows})
    listed = [{"path": str(files[r["clip"]].relative_to(cache)) if r["clip"] in files else f"not-downloaded/{r['clip']}.mp4",
               "video_id": r["clip"], "label": r["label"], "split": r["split"]} for r in rows]
    if spec.parts:  # a subset: only clips of the downloaded parts are expected
        listed = [r for r in listed if not r["path"].startswith("not-downloaded/")]
        if not listed:
            raise DataError(f"{spec.name}: none of the annotated clips are in the first {spec.parts} part(s)")
    source = {"kind": spec.kind, "version": VERSION, "versions": versions, "splits": list(spec.splits),
              "parts": spec.parts or "all", "base_url": spec.base_url or CVDF,
              "annotation_sha256": {f"{v}/{s}": sha256_file(cache / FOLDERS[v] / "annotations" / f"{SPLIT_NAMES[s]}.csv")
                                    for v in versions for s in spec.splits}}
    return ingest(spec.name, cache, listed, classes, spec.short_side, Path(out_dir), workers, source)
