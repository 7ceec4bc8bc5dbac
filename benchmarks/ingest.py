"""Ingest and part-download throughput at K710's shape (issue 24, item 3), on this machine.

    python benchmarks/ingest.py                          # 40 clips per kind, 2 workers, 8 parts
    python benchmarks/ingest.py --clips 100 --workers 2 --parts 8 --note "..."

Ingest (fourtier.data.folder.ingest, as every public dataset uses it), in clips/s, for N clips of each kind:
  kept       320x240 H.264, short side 240 <= short_side 320: validated and copied as they are
  remuxed    320x240 VP9 WebM written to a pipe (no duration in the header, as SSv2's): decord cannot open
             it, so the stream is copied into MP4 (no re-encode)
  reencoded  480x360 H.264: rescaled to 427x320 with libx264 (what every clip cost when it was re-encoded)
  resumed    the kept clips again, into the out_dir of a run whose journal lists them all (what a re-run
             after a kill costs for the clips already done)
Each clip is 2 s at 25 fps (50 frames), generated with the project's ffmpeg (fourtier.video.media.ffmpeg_exe).

Download (fourtier.data.kinetics.fetch_parts): P tar.gz parts served on 127.0.0.1 by a server that holds each
request `--delay` s before the first byte and sends at most `--rate` MB/s per connection (a stand-in for a
remote object store's per-connection throughput; the loopback itself is not the limit), fetched and
extracted with download.parallel 1 and 4.

Prints a table and appends one JSON line per measurement to benchmarks/results/ingest.jsonl.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ingest.jsonl"
SHORT_SIDE = 320


def make_clip(path: Path, size: str, codec: str, seed: int) -> None:
    from fourtier.video.media import run_ffmpeg

    # moving noise over a test pattern: real encoding work, and every clip different
    source = f"testsrc2=size={size}:rate=25:duration=2,noise=alls={20 + seed % 30}:allf=t"
    if codec == "vp9":  # to a pipe: a WebM with no duration in its header
        proc = run_ffmpeg(["-f", "lavfi", "-i", source, "-c:v", "libvpx-vp9", "-b:v", "300k", "-deadline", "realtime",
                           "-cpu-used", "8", "-f", "webm", "pipe:1"])
        path.write_bytes(proc.stdout)
    else:
        proc = run_ffmpeg(["-y", "-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "veryfast",
                           "-pix_fmt", "yuv420p", str(path)])
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg could not make {path}: {proc.stderr.decode()[-300:]}")


KINDS = {"kept": ("320x240", "h264", ".mp4"), "remuxed": ("320x240", "vp9", ".webm"),
         "reencoded": ("480x360", "h264", ".mp4")}


def make_clips(root: Path, n: int) -> dict[str, list[dict]]:
    from fourtier.runtime.parallel import map_progress

    jobs = [(root / kind / f"{kind}_{i:05d}{suffix}", size, codec, i)
            for kind, (size, codec, suffix) in KINDS.items() for i in range(n)]
    for kind in KINDS:
        (root / kind).mkdir(parents=True, exist_ok=True)
    list(map_progress(_make_job, jobs, os.cpu_count() or 1, desc="making clips"))
    return {kind: [{"path": f"{kind}/{p.name}", "label": f"class{i % 4}", "split": "train"}
                   for p, _, _, i in jobs if p.parent.name == kind] for kind in KINDS}


def _make_job(job) -> None:
    make_clip(*job)


def bench_ingest(root: Path, rows: dict[str, list[dict]], workers: int, scratch: Path) -> list[dict]:
    from fourtier.data import folder

    results = []
    for kind, listed in rows.items():
        out = scratch / f"raw-{kind}" / kind
        start = time.perf_counter()
        manifest = folder.ingest(kind, root, listed, sorted({r["label"] for r in listed}), SHORT_SIDE, out, workers,
                                 {"kind": "benchmark"})
        seconds = time.perf_counter() - start
        expected = {"kept": (0, 0), "remuxed": (len(listed), len(listed)), "reencoded": (len(listed), 0)}[kind]
        got = (manifest["normalised"], manifest["remuxed"])
        if got != expected or manifest["skipped"]:
            raise SystemExit(f"{kind}: (normalised, remuxed) = {got}, expected {expected}; "
                             f"skipped {manifest['skipped'][:2]}")
        results.append({"what": f"ingest {kind}", "clips": len(listed), "seconds": seconds})
    # resumed: a journal that lists every kept clip (a run killed after its last clip), then the same ingest
    listed = rows["kept"]
    out = scratch / "raw-resumed" / "kept"
    jobs = [(folder.listed_file(root, r["path"]), out / "videos" / folder.video_id_for(r["path"]), SHORT_SIDE)
            for r in listed]
    meta = [(folder.video_id_for(r["path"]), r["label"], r["split"], r["path"]) for r in listed]
    (out / "videos").mkdir(parents=True)
    folder._run_or_resume("kept", jobs, meta, workers, out)
    start = time.perf_counter()
    folder.ingest("kept", root, listed, sorted({r["label"] for r in listed}), SHORT_SIDE, out, workers, {})
    results.append({"what": "ingest resumed (all journaled)", "clips": len(listed),
                    "seconds": time.perf_counter() - start})
    for r in results:
        r.update(workers=workers, clips_per_s=round(r["clips"] / r["seconds"], 2), seconds=round(r["seconds"], 2))
    return results


def throttled_handler(directory: Path, delay: float, rate_mb_s: float):
    class Throttled(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def copyfile(self, source, outputfile):  # the body: at most rate_mb_s per connection
            time.sleep(delay)
            block = 64 * 1024
            while True:
                data = source.read(block)
                if not data:
                    break
                outputfile.write(data)
                time.sleep(len(data) / (rate_mb_s * 1e6))

    return functools.partial(Throttled, directory=str(directory))


def bench_download(root: Path, rows: list[dict], parts: int, delay: float, rate: float, scratch: Path) -> list[dict]:
    from fourtier.data.kinetics import fetch_parts

    www = scratch / "www"
    www.mkdir()
    per_part = max(1, len(rows) // parts)
    for p in range(parts):
        with tarfile.open(www / f"part_{p}.tar.gz", "w:gz") as tf:
            for r in rows[p * per_part:(p + 1) * per_part] or rows[:1]:
                tf.add(root / r["path"], arcname=f"part_{p}/{Path(r['path']).name}")
    total_mb = sum(f.stat().st_size for f in www.iterdir()) / 1e6
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), throttled_handler(www, delay, rate))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    results = []
    try:
        for parallel in (1, 4):
            cache = scratch / f"cache-{parallel}"
            jobs = [(f"{url}/part_{p}.tar.gz", cache / "archives" / f"part_{p}.tar.gz", cache / "videos" / f"part_{p}")
                    for p in range(parts)]
            start = time.perf_counter()
            fetch_parts(jobs, parallel)
            seconds = time.perf_counter() - start
            results.append({"what": f"download parallel {parallel}", "parts": parts, "mb": round(total_mb, 1),
                            "delay_s": delay, "per_connection_mb_s": rate, "seconds": round(seconds, 2),
                            "parts_per_s": round(parts / seconds, 2), "mb_per_s": round(total_mb / seconds, 2)})
    finally:
        httpd.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40, help="clips per kind")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds before each archive's first byte")
    parser.add_argument("--rate", type=float, default=2.0, help="MB/s per connection")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fourtier-ingest-bench-"))
    try:
        root = scratch / "src"
        rows = make_clips(root, args.clips)
        results = bench_ingest(root, rows, args.workers, scratch)
        results += bench_download(root, rows["kept"] + rows["reencoded"], args.parts, args.delay, args.rate, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    date = datetime.date.today().isoformat()
    print(f"\n{'measurement':34} {'items':>6} {'seconds':>8}  rate")
    for r in results:
        items = r.get("clips", r.get("parts"))
        rate = f"{r['clips_per_s']} clips/s" if "clips" in r else f"{r['parts_per_s']} parts/s, {r['mb_per_s']} MB/s"
        print(f"{r['what']:34} {items:>6} {r['seconds']:>8}  {rate}")
    with open(RESULTS, "a") as fh:
        for r in results:
            fh.write(json.dumps({**r, "cores": os.cpu_count(), "date": date, "note": args.note}) + "\n")
    print(f"appended {len(results)} lines to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
