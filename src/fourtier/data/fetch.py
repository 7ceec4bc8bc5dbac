"""Downloads and archive extraction for public datasets.

`fetch` streams a URL to disk with a progress bar, resumes an interrupted download with an HTTP Range request
guarded by If-Range (the ETag or Last-Modified the server gave when the download began, kept beside the
`.part` file: a changed file on the server, or a `.part` of unknown origin, restarts from zero instead of
being spliced),
retries transient errors (connection resets, timeouts, 5xx) with back-off, and verifies the result against a
known size and/or sha256. A mismatch is an error and the bad file is moved aside (`<name>.bad`), never used.
A dead link (404, 410, 403) fails at once with the URL in the message. Several fetches may run at once in
threads (distinct destinations); then `progress=False` leaves the bar to the caller, and a `cancel` event set by
it stops the others within one block (what they wrote is kept for the resume).

`extract` unpacks tar (with the `data` filter), zip and rar archives, refusing absolute paths, `..`
traversal and links that leave the destination. The type comes from the container's own first bytes
(never from a member: a tar whose last member is a zip is a tar). `extract_once` unpacks into a work folder
beside the destination and renames it into place when complete, so a killed extraction is never taken as done.
"""
from __future__ import annotations

import json
import shutil
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from fourtier.data.contract import sha256_file
from fourtier.errors import DataError

PERMANENT_HTTP = {400, 401, 403, 404, 410, 451}
CHUNK = 1 << 20


def _check(path: Path, sha256: str | None, size: int | None) -> str:
    """'' when the file matches what is known about it, else the reason."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} bytes, expected {size}"
    if sha256:
        digest = sha256_file(path)
        if digest != sha256.lower():
            return f"sha256 {digest}, expected {sha256.lower()}"
    return ""


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _resumable(url: str, part: Path, retry: bool) -> tuple[bool, str]:
    """(resume?, validator). A .part left by an earlier run resumes only with the validator the server gave
    for it (sent as If-Range); one from another URL or of unknown origin restarts. A retry within the same
    call resumes what it wrote seconds ago, with the validator if there is one."""
    sidecar = _validator_file(part)
    if not part.exists() or not sidecar.exists():
        return False, ""
    try:
        saved = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False, ""
    if saved.get("url") != url:
        return False, ""
    validator = saved.get("validator", "")
    return bool(validator) or retry, validator


def _stream(url: str, part: Path, timeout: float, desc: str, retry: bool = False, progress: bool = True,
            cancel: threading.Event | None = None) -> None:
    """Append the rest of `url` to `part`, starting from its current size when the server's file is unchanged."""
    from tqdm import tqdm

    resume, validator = _resumable(url, part, retry)
    have = part.stat().st_size if resume else 0
    headers = {"User-Agent": "fourtier"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator  # changed on the server: it sends all of the new file (200)
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the partial file is complete (checked after)
            return
        raise
    with response:
        if have and response.status != 206:  # changed since, or Range ignored: start over
            have = 0
        if not have:
            etag = response.headers.get("ETag", "")
            # a weak ETag may not be used in If-Range (RFC 9110 13.1.5); Last-Modified may
            fresh = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified", "")
            _validator_file(part).write_text(json.dumps({"url": url, "validator": fresh}))
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        total = int(total) if total.isdigit() else (int(response.headers.get("Content-Length") or 0) + have) or None
        with open(part, "ab" if have else "wb") as fh, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=desc, dynamic_ncols=True,
                     mininterval=1.0, disable=not progress) as bar:
            while True:
                if cancel is not None and cancel.is_set():
                    raise DataError(f"{url}: stopped, as another download failed or the run was interrupted; "
                                    f"re-running resumes from the {fh.tell()} bytes in {part}")
                block = response.read(CHUNK)
                if not block:
                    break
                fh.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")


def fetch(url: str, dest: Path, sha256: str | None = None, size: int | None = None, retries: int = 4,
          timeout: float = 30.0, backoff: float = 2.0, progress: bool = True,
          cancel: threading.Event | None = None) -> Path:
    """Download url to dest (resumable, verified). Returns dest; a verified dest is not downloaded again.
    progress: a byte bar for this file; cancel: stop when it is set (module doc)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not _check(dest, sha256, size):
        return dest
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _stream(url, part, timeout, dest.name, retry=attempt > 0, progress=progress, cancel=cancel)
            break
        except urllib.error.HTTPError as exc:
            if exc.code in PERMANENT_HTTP:
                raise DataError(f"{url}: HTTP {exc.code} {exc.reason}. The link is dead or needs access rights; "
                                "check the dataset's page for its current location and set the URL in params.yaml, "
                                "or download it by hand into the folder the README names") from None
            reason = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
        if attempt == retries:
            kept = part.stat().st_size if part.exists() else 0
            raise DataError(f"{url}: {reason} (after {retries + 1} attempts). Check the network or the server; "
                            f"re-running resumes from the {kept} bytes already in {part}") from None
        time.sleep(backoff * 2 ** attempt)
    problem = _check(part, sha256, size)
    if problem:
        bad = dest.with_name(dest.name + ".bad")
        part.replace(bad)
        _validator_file(part).unlink(missing_ok=True)
        raise DataError(f"{url}: downloaded file does not match: {problem}. It is kept aside as {bad} and not "
                        "used; delete it and re-run to download again, or report the changed file upstream")
    part.replace(dest)
    _validator_file(part).unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------------------------------------
# extraction

def _safe_member(name: str, dest: Path) -> Path:
    """The path a member named `name` extracts to, or an error for absolute or escaping paths."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        raise DataError(f"archive entry {name!r} has an absolute path; refusing to extract it")
    target = (dest / pure).resolve()
    if target != dest.resolve() and dest.resolve() not in target.parents:
        raise DataError(f"archive entry {name!r} points outside the destination (path traversal); refusing "
                        "to extract it")
    return target


RAR_MAGIC = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive's end record


def archive_kind(archive: Path) -> str:
    """zip, tar or rar, from the container's first bytes. zipfile.is_zipfile would also accept a tar whose
    last member is a zip (it looks for a zip directory near the end), so it is not used."""
    with open(archive, "rb") as fh:
        head = fh.read(8)
    if head[:7] in RAR_MAGIC:
        return "rar"
    if head[:4] in ZIP_MAGIC:
        return "zip"
    if tarfile.is_tarfile(archive):  # plain, gzip, bzip2 or xz: the first member's header must parse
        return "tar"
    raise DataError(f"{archive} is not a zip, tar or rar archive (damaged, or not the file expected); delete it "
                    "and re-run to download it again")


def extract(archive: Path, dest: Path) -> None:
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    kind = archive_kind(archive)
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _safe_member(info.filename, dest)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"{archive}: entry {info.filename!r} is a symbolic link; refusing to extract it")
            zf.extractall(dest)
    elif kind == "tar":
        with tarfile.open(archive) as tf:
            try:
                for member in tf.getmembers():  # check every entry before writing any
                    _safe_member(member.name, dest)  # refuse, where the filter would strip a leading '/'
                    tarfile.data_filter(member, str(dest))
                tf.extractall(dest, filter="data")  # no absolute paths, traversal, devices or escaping links
            except tarfile.FilterError as exc:
                raise DataError(f"{archive}: {exc}; refusing to extract it") from None
    else:
        _extract_rar(archive, dest)


ARCHIVE_SUFFIXES = (".rar", ".zip", ".tar", ".tar.gz", ".tgz")


def extract_once(archive: Path, dest: Path) -> None:
    """Extract into dest unless a previous run finished it (a marker names the archive); nested archives
    (HMDB51 ships one rar per class) are extracted where they lie. The work happens in `.<dest>.partial` beside
    dest, renamed to dest when complete: a kill leaves no dest that looks done, and the next run starts the
    work folder afresh. Archives with distinct destinations may be extracted at once."""
    archive, dest = Path(archive), Path(dest)
    done = dest / ".extracted"
    if done.exists() and done.read_text() == archive.name:
        return
    work = dest.with_name(f".{dest.name}.partial")
    if work.exists():  # left by a killed run
        shutil.rmtree(work)
    extract(archive, work)
    for inner in sorted(p for p in work.rglob("*") if p.name.lower().endswith(ARCHIVE_SUFFIXES)):
        extract(inner, inner.parent)
        inner.unlink()
    (work / ".extracted").write_text(archive.name)
    if dest.exists():  # an extraction of an older run that never finished, or of another archive
        shutil.rmtree(dest)
    work.rename(dest)


def _extract_rar(archive: Path, dest: Path) -> None:
    """RAR needs an external tool: unrar, 7z or bsdtar (libarchive), whichever is on PATH."""
    import subprocess

    tools = [("unrar", ["unrar", "x", "-o+", "-idq", str(archive), str(dest) + "/"], ["unrar", "lb", str(archive)]),
             ("7z", ["7z", "x", "-y", f"-o{dest}", str(archive)], ["7z", "l", "-slt", "-ba", str(archive)]),
             ("bsdtar", ["bsdtar", "-xf", str(archive), "-C", str(dest)], ["bsdtar", "-tf", str(archive)])]
    for tool, extract_cmd, list_cmd in tools:
        if shutil.which(tool):
            listing = subprocess.run(list_cmd, capture_output=True, text=True)
            names = [line.removeprefix("Path = ") for line in listing.stdout.splitlines()
                     if tool != "7z" or line.startswith("Path = ")]
            for name in names:
                _safe_member(name, dest)
            done = subprocess.run(extract_cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise DataError(f"{tool} could not extract {archive}: {done.stderr.strip()[-500:]}")
            return
    raise DataError(f"{archive} is a RAR archive and no RAR tool was found. Install one without root, e.g. "
                    "`conda install -c conda-forge unrar` or a static `7zz` from 7-zip.org on PATH as `7z`; with "
                    "root, `apt install unrar` (or `libarchive-tools` for bsdtar). Then re-run")
