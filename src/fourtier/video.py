"""Reading videos: probe, full-decode check, and K keyframes at equal time intervals.

ffmpeg is the binary that the `imageio-ffmpeg` wheel ships (no root, no system package). It has no
ffprobe, so `probe` parses the stream header that `ffmpeg -i` prints. decord is the fast reader; it
ignores rotation metadata and non-square pixels, so `read_keyframes` applies both itself, and falls
back to ffmpeg (which applies rotation on its own) for containers decord cannot open.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from fourtier.errors import VideoError


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], input_bytes: bytes | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args], input=input_bytes,
                          capture_output=True, timeout=timeout)


@dataclass(frozen=True)
class VideoStream:
    width: int  # coded size, before rotation
    height: int
    sar: Fraction  # sample (pixel) aspect ratio
    rotation: int  # display rotation in degrees as ffmpeg reports it (-90 = shown turned clockwise)
    fps: float
    codec: str
    pix_fmt: str

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as the clip is meant to be shown: square pixels, rotation applied."""
        w = round(self.width * float(self.sar))
        h = self.height
        return (h, w) if self.rotation % 180 else (w, h)


@dataclass(frozen=True)
class VideoInfo:
    path: str
    container: str
    duration: float | None  # from the header; None when the header has none
    streams: tuple[VideoStream, ...]

    @property
    def main_stream(self) -> VideoStream:
        """The stream ffmpeg and decord read by default: the one with the most pixels."""
        return max(self.streams, key=lambda s: s.width * s.height)

    def stream_of_size(self, width: int, height: int) -> VideoStream:
        for s in self.streams:  # frames may come rotated already: match either orientation
            if (s.width, s.height) in ((width, height), (height, width)):
                return s
        return self.main_stream


_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>\w+)[^,]*, (?P<pix>[\w]+)(?:\([^)]*\))?, "
                        r".*?(?P<w>\d{2,5})x(?P<h>\d{2,5})(?P<rest>.*)")
_SAR_RE = re.compile(r"SAR (\d+):(\d+)")
_FPS_RE = re.compile(r"([\d.]+) fps")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_INPUT_RE = re.compile(r"Input #0, ([\w,]+), from")


def probe(path: str | Path) -> VideoInfo:
    """Header facts of every video stream; raises VideoError if ffmpeg cannot open the file."""
    path = str(path)
    if not Path(path).is_file():
        raise VideoError(f"file not found: {path}")
    proc = run_ffmpeg(["-i", path], timeout=60)
    text = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise VideoError(f"cannot open as video: {last}")
    lines = text.splitlines()
    streams = []
    for i, line in enumerate(lines):
        m = _STREAM_RE.search(line)
        if not m or "attached pic" in line:
            continue
        sar = _SAR_RE.search(m.group("rest"))
        sar_value = Fraction(int(sar.group(1)), int(sar.group(2))) if sar and int(sar.group(1)) > 0 else Fraction(1)
        fps = _FPS_RE.search(line)
        rotation = 0
        # side data (display matrix) follows the stream line, indented, until the next stream
        for follow in lines[i + 1:]:
            if follow.lstrip().startswith("Stream #"):
                break
            r = _ROTATION_RE.search(follow)
            if r:
                rotation = int(round(float(r.group(1)))) % 360
                rotation = rotation - 360 if rotation > 180 else rotation
                break
        streams.append(VideoStream(width=int(m.group("w")), height=int(m.group("h")), sar=sar_value,
                                   rotation=rotation, fps=float(fps.group(1)) if fps else 0.0,
                                   codec=m.group("codec"), pix_fmt=m.group("pix")))
    if not streams:
        raise VideoError("no video stream in file")
    d = _DURATION_RE.search(text)
    duration = int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3)) if d else None
    container = _INPUT_RE.search(text)
    return VideoInfo(path=path, container=container.group(1) if container else "?", duration=duration,
                     streams=tuple(streams))


@dataclass(frozen=True)
class DecodeCheck:
    frames: int  # frames that actually decode
    decoded_duration: float  # seconds of decodable video
    errors: tuple[str, ...]  # decoder error lines (first few)


# Messages of the discarding output side, not of the decoder: irregular timestamps (variable frame rate phone
# and screen recordings) round to equal dts in the null muxer's time base; the pictures decoded fine.
_MUXER_MESSAGE = re.compile(r"^\s*\[(null|out#[^\]]*|vost#[^\]]*)( @ [^\]]*)?\]|to muxer")


def decode_check(path: str | Path, timeout: float = 600) -> DecodeCheck:
    """Decode the whole default video stream, discarding the pictures: the ground truth of what is readable."""
    proc = run_ffmpeg(["-nostats", "-v", "error", "-i", str(path), "-an", "-sn", "-dn",
                       "-f", "null", "-progress", "pipe:1", "-"], timeout=timeout)
    out = proc.stdout.decode("utf-8", "replace")
    frames = [int(x) for x in re.findall(r"^frame=(\d+)", out, re.M)]
    times = re.findall(r"^out_time_us=(\d+)", out, re.M)
    errors = tuple(line.strip() for line in proc.stderr.decode("utf-8", "replace").splitlines()
                   if line.strip() and not line.strip().startswith("Last message repeated")
                   and not _MUXER_MESSAGE.search(line))
    return DecodeCheck(frames=frames[-1] if frames else 0,
                       decoded_duration=int(times[-1]) / 1e6 if times else 0.0,
                       errors=errors[:5])


def readability_problem(info: VideoInfo, check: DecodeCheck) -> str | None:
    """A reason to skip the file, or None if it is readable: used by `download` to validate videos."""
    if check.frames == 0:
        first = check.errors[0] if check.errors else "no frames"
        return f"no decodable frames ({first})"
    if info.duration and check.decoded_duration < 0.9 * info.duration - 0.5:
        return (f"truncated: header says {info.duration:.2f} s, only {check.decoded_duration:.2f} s "
                f"({check.frames} frames) decode")
    if check.errors:
        return f"corrupt: decoder reported errors ({check.errors[0]})"
    return None


# ---------------------------------------------------------------------------------------------
# keyframes

def keyframe_indices(pts: np.ndarray, k: int) -> np.ndarray:
    """Indices of the frames on screen at the centres of k equal time segments (paper §3.2).

    `pts` are presentation times in seconds, one per frame, in order. Using time rather than index
    samples variable-frame-rate clips evenly in time; for a constant frame rate it equals the index
    rule floor((j + 0.5) * n / k). With fewer frames than k, frames repeat.
    """
    n = len(pts)
    if n == 0:
        raise VideoError("no frames")
    last = float(pts[-1] - pts[-2]) if n > 1 else 1.0  # the last frame lasts as long as the one before
    start, end = float(pts[0]), float(pts[-1]) + last
    centres = start + (np.arange(k) + 0.5) * (end - start) / k
    # tolerance: a centre that falls exactly on a frame's start time must pick that frame
    idx = np.searchsorted(pts, centres + 1e-6 * (end - start), side="right") - 1
    return np.clip(idx, 0, n - 1)


def _valid_pts(pts: np.ndarray) -> bool:
    return bool(len(pts)) and bool(np.all(np.isfinite(pts))) and pts[0] > -1.0 and bool(np.all(np.diff(pts) >= 0))


@dataclass
class Keyframes:
    frames: list[np.ndarray]  # K frames, uint8 HxWx3, rotation applied (pixels not yet made square)
    indices: list[int]
    timestamps: list[float]
    display_size: tuple[int, int]  # (width, height) the frames should be shown at
    n_frames: int
    reader: str


def _read_decord(path: str, k: int, info: VideoInfo) -> Keyframes:
    import decord

    try:
        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
        if n == 0:
            raise VideoError("decord found no frames")
        pts = np.asarray(vr.get_frame_timestamp(list(range(n))))[:, 0].astype(np.float64)
        if not _valid_pts(pts):  # e.g. AVI files report garbage start times
            fps = vr.get_avg_fps() or 25.0
            pts = np.arange(n) / fps
        idx = keyframe_indices(pts, k)
        batch = vr.get_batch(idx.tolist()).asnumpy()
    except decord.DECORDError as exc:
        raise VideoError(f"decord: {str(exc).splitlines()[0][:200]}") from None
    # decord applies the rotation metadata itself (checked against ffmpeg in the tests), not the SAR
    stream = info.stream_of_size(batch.shape[2], batch.shape[1])
    frames = list(batch)
    return Keyframes(frames, idx.tolist(), [round(float(pts[i]), 4) for i in idx], stream.display_size, n, "decord")


_DECODE_ERROR_RE = re.compile(r"error|invalid|corrupt|partial file|overread", re.IGNORECASE)
_PTS_TIME_RE = re.compile(r"n:\s*(\d+).*?pts_time:\s*(-?[\d.e+-]+)")


def _read_ffmpeg(path: str, k: int, info: VideoInfo) -> Keyframes:
    """Two passes: timestamps of every decodable frame, then only the selected ones as PPM."""
    proc = run_ffmpeg(["-i", path, "-an", "-sn", "-dn", "-vf", "showinfo", "-f", "null", "-"])
    log = proc.stderr.decode("utf-8", "replace")
    found = _PTS_TIME_RE.findall(log)
    if not found:
        raise VideoError("ffmpeg decoded no frames")
    errors = [line for line in log.splitlines() if _DECODE_ERROR_RE.search(line) and "showinfo" not in line]
    if errors:
        raise VideoError(f"corrupt: decoder reported errors ({errors[0].strip()[:160]})")
    pts = np.array([float(t) for _, t in found])
    if not _valid_pts(pts):
        pts = np.arange(len(pts)) / (info.main_stream.fps or 25.0)
    span = float(pts[-1] - pts[0])
    if info.duration and span < 0.9 * info.duration - 0.5:
        raise VideoError(f"truncated: header says {info.duration:.2f} s, only {span:.2f} s ({len(pts)} frames) decode")
    idx = keyframe_indices(pts, k)
    unique = sorted(set(idx.tolist()))
    select = "+".join(f"eq(n\\,{i})" for i in unique)
    proc = run_ffmpeg(["-i", path, "-an", "-sn", "-dn", "-vf", f"select={select}", "-fps_mode", "passthrough",
                       "-f", "image2pipe", "-vcodec", "ppm", "pipe:1"])
    decoded = _parse_ppm_stream(proc.stdout)
    if len(decoded) != len(unique):
        raise VideoError(f"ffmpeg returned {len(decoded)} of {len(unique)} selected frames")
    by_index = dict(zip(unique, decoded))
    stream = info.main_stream
    return Keyframes([by_index[i] for i in idx], idx.tolist(), [round(float(pts[i]), 4) for i in idx],
                     stream.display_size, len(pts), "ffmpeg")


def _parse_ppm_stream(data: bytes) -> list[np.ndarray]:
    frames, pos = [], 0
    while pos < len(data):
        # header: P6 <w> <h> <maxval> then one whitespace byte
        fields, p = [], pos
        while len(fields) < 4:
            while data[p:p + 1].isspace():
                p += 1
            start = p
            while not data[p:p + 1].isspace():
                p += 1
            fields.append(data[start:p])
        if fields[0] != b"P6":
            raise VideoError("ffmpeg produced an unexpected image stream")
        w, h = int(fields[1]), int(fields[2])
        p += 1
        size = w * h * 3
        frames.append(np.frombuffer(data[p:p + size], np.uint8).reshape(h, w, 3))
        pos = p + size
    return frames


def read_keyframes(path: str | Path, k: int, info: VideoInfo | None = None) -> Keyframes:
    """K keyframes at equal time intervals; decord first, ffmpeg if decord fails or returns flat frames."""
    path = str(path)
    info = info or probe(path)
    try:
        key = _read_decord(path, k, info)
        if not _all_flat(key.frames):
            return key
    except VideoError:
        pass
    key = _read_ffmpeg(path, k, info)
    if _all_flat(key.frames):
        raise VideoError("every keyframe is a single flat colour (blank or undecodable video)")
    return key


def _all_flat(frames: list[np.ndarray]) -> bool:
    return all(int(f.max()) - int(f.min()) == 0 for f in frames)
