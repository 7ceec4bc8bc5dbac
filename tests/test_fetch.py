"""Downloads and extraction against a local HTTP server on 127.0.0.1 (no internet): resume after a cut
connection, checksum mismatch, 404, timeout, and archives that try to escape their destination."""
import hashlib
import io
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fourtier.data.fetch import extract, extract_once, fetch
from fourtier.errors import DataError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    requests: list = []
    cut_once: set = set()

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/missing"):
            self.send_error(404, "Not Found")
            return
        if self.path.startswith("/slow"):
            time.sleep(2)
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        body = PAYLOAD[start:]
        if self.path.startswith("/cut") and self.path not in Handler.cut_once:
            Handler.cut_once.add(self.path)
            self.wfile.write(body[:300_000])  # then the connection drops
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_cut_connection_resumes_with_a_range_request(server, tmp_path):
    Handler.requests.clear()
    dest = fetch(f"{server}/cut/data.bin", tmp_path / "data.bin", sha256=SHA, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for p, r in Handler.requests if p == "/cut/data.bin"]
    assert ranges[0] is None and ranges[1] == "bytes=300000-"  # the second request asked only for the rest
    assert not (tmp_path / "data.bin.part").exists()
    Handler.requests.clear()
    fetch(f"{server}/cut/data.bin", dest, sha256=SHA)  # verified already: no request at all
    assert Handler.requests == []


def test_checksum_mismatch_is_an_error_and_the_file_is_kept_aside(server, tmp_path):
    with pytest.raises(DataError, match="does not match: sha256") as err:
        fetch(f"{server}/data.bin", tmp_path / "data.bin", sha256="0" * 64)
    assert "data.bin.bad" in str(err.value)
    assert (tmp_path / "data.bin.bad").read_bytes() == PAYLOAD and not (tmp_path / "data.bin").exists()
    with pytest.raises(DataError, match="size 1048576 bytes, expected 1000"):
        fetch(f"{server}/data.bin", tmp_path / "other.bin", size=1000)


def test_404_fails_at_once_with_the_url(server, tmp_path):
    Handler.requests.clear()
    with pytest.raises(DataError, match=r"/missing/x.rar: HTTP 404") as err:
        fetch(f"{server}/missing/x.rar", tmp_path / "x.rar", backoff=0)
    assert "link is dead" in str(err.value) and len(Handler.requests) == 1  # no retries


def test_timeout_is_retried_then_reported(server, tmp_path):
    Handler.requests.clear()
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"timed out \(after 2 attempts\)"):
        fetch(f"{server}/slow/data.bin", tmp_path / "data.bin", retries=1, timeout=0.3, backoff=0)
    assert len(Handler.requests) == 2 and time.perf_counter() - start < 5


def test_unreachable_server_is_reported(tmp_path):
    with pytest.raises(DataError, match=r"127.0.0.1:9/x.bin: .*after 1 attempts"):
        fetch("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", retries=0)


def _tar(path, names):
    with tarfile.open(path, "w:gz") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    return path


def test_extraction_refuses_path_traversal_and_absolute_paths(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="outside the destination"):
        extract(_tar(tmp_path / "evil.tar.gz", ["ok/a.txt", "../evil.txt"]), dest)
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(DataError, match="has an absolute path"):
        extract(_tar(tmp_path / "abs.tar.gz", ["/tmp/fourtier-evil.txt"]), dest)
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("fine.txt", "x")
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(DataError, match="path traversal"):
        extract(tmp_path / "evil.zip", dest)
    assert not (tmp_path / "evil.txt").exists() and not (dest / "fine.txt").exists()  # nothing half-extracted


def test_good_archives_extract(tmp_path):
    extract(_tar(tmp_path / "good.tar.gz", ["d/a.txt", "d/b.txt"]), tmp_path / "t")
    assert (tmp_path / "t/d/a.txt").read_bytes() == b"abc"
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as zf:
        zf.writestr("d/c.txt", "xyz")
    extract(tmp_path / "good.zip", tmp_path / "z")
    assert (tmp_path / "z/d/c.txt").read_text() == "xyz"


class Versioned(BaseHTTPRequestHandler):
    """One URL whose file changes between runs: version A (ETag "a") is cut mid-way, then B ("b") is served.
    Honours If-Range as HTTP does: a stale validator gets the whole current file with 200."""
    version = "a"
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = PAYLOAD if Versioned.version == "a" else PAYLOAD[::-1]
        Versioned.requests.append((self.headers.get("Range"), self.headers.get("If-Range")))
        start = 0
        if self.headers.get("Range") and self.headers.get("If-Range") in (None, f'"{Versioned.version}"'):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("ETag", f'"{Versioned.version}"')
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if Versioned.version == "a" and not start:
            self.wfile.write(body[:300_000])  # cut: the run dies with a .part
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body[start:])


@pytest.fixture
def versioned():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Versioned)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Versioned.version, Versioned.requests = "a", []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/data.bin"
    httpd.shutdown()


def test_a_part_of_a_file_changed_on_the_server_is_not_spliced(versioned, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError):
        fetch(versioned, dest, retries=0)  # no sha256 pinned: nothing else would catch a splice
    assert (tmp_path / "data.bin.part").stat().st_size == 300_000
    Versioned.version = "b"
    fetch(versioned, dest, retries=0)
    assert Versioned.requests[-1] == ("bytes=300000-", '"a"')  # asked to resume only if still version a
    assert dest.read_bytes() == PAYLOAD[::-1]  # got all of b, not a's head with b's tail


def test_a_part_of_unknown_origin_restarts(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(b"left over from something else" * 1000)
    Handler.requests.clear()
    dest = fetch(f"{server}/data.bin", tmp_path / "data.bin")
    assert dest.read_bytes() == PAYLOAD
    assert Handler.requests == [("/data.bin", None)]  # no Range: started over


def test_archive_type_comes_from_the_container_not_a_member(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("inside_zip.txt", "z")
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in (("first.txt", b"t"), ("last.zip", inner.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # the tar's format ends with zero blocks; trimmed (as some writers leave it) the zip's end record is last
    data = archive.read_bytes().rstrip(b"\0")
    archive.write_bytes(data + b"\0" * (-len(data) % 512))
    assert zipfile.is_zipfile(archive)  # the trap: a zip directory near the end
    extract(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.txt", "last.zip"]


def test_a_half_extracted_archive_is_extracted_again_not_taken_as_done(tmp_path):
    archive = _tar(tmp_path / "part_0.tar.gz", ["part_0/a.mp4", "part_0/b.mp4"])
    dest = tmp_path / "videos" / "part_0"
    # what a kill leaves: the work folder with some members, and (from code before the work folder) a dest
    # with files but no marker
    (tmp_path / "videos" / ".part_0.partial" / "part_0").mkdir(parents=True)
    (tmp_path / "videos" / ".part_0.partial" / "part_0" / "a.mp4").write_bytes(b"a")
    (dest / "part_0").mkdir(parents=True)
    (dest / "part_0" / "a.mp4").write_bytes(b"half")
    (dest / "part_0" / "stale.mp4").write_bytes(b"x")
    extract_once(archive, dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == [".extracted", "part_0/a.mp4", "part_0/b.mp4"]
    assert (dest / "part_0" / "a.mp4").read_bytes() == b"abc"
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["part_0"]  # no work folder left
    (dest / "part_0" / "a.mp4").write_bytes(b"mine")
    extract_once(archive, dest)  # done: not extracted again
    assert (dest / "part_0" / "a.mp4").read_bytes() == b"mine"


def test_a_set_cancel_event_stops_a_download_and_keeps_what_it_wrote(server, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DataError, match="another download failed or the run was interrupted; re-running resumes"):
        fetch(f"{server}/data.bin", tmp_path / "data.bin", cancel=cancel, progress=False)
    assert (tmp_path / "data.bin.part").exists() and not (tmp_path / "data.bin").exists()
    assert fetch(f"{server}/data.bin", tmp_path / "data.bin", progress=False).read_bytes() == PAYLOAD
