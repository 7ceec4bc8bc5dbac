"""Reading videos: probe, full-decode check, and K keyframes at equal time intervals.

Probing and the decode check go through PyAV, whose wheel bundles FFmpeg's libraries (no root, no system
package): streams, rotation, timestamps and decode errors come as data and exceptions. decord is the fast
frame reader; it applies rotation but not non-square pixels, so each Keyframes carries the display size. PyAV
is the fallback reader for containers decord cannot open. The ffmpeg binary that the `imageio-ffmpeg` wheel
ships only writes videos (run_ffmpeg).
"""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
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


def _open(path: str):
    import av

    if not Path(path).is_file():
        raise VideoError(f"file not found: {path}")
    try:
        return av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot open as video: {exc.strerror or exc}") from None


def _video_streams(container) -> list:
    """The real video streams: an embedded cover picture (MP3 art, MP4 thumbnails) is not one."""
    import av

    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
            and s.codec_context.width > 0 and s.codec_context.height > 0]


def _rotation(container, stream) -> int:
    """The display rotation in degrees (-180, 180], as FFmpeg gives it: its decoder attaches the stream's display
    matrix to every frame, so the first frame says it. 0 if none decodes (decode_check then says why)."""
    import av

    try:
        frame = next(container.decode(stream), None)
    except av.error.FFmpegError:
        frame = None
    rotation = int(round(frame.rotation)) % 360 if frame is not None else 0
    return rotation - 360 if rotation > 180 else rotation


def probe(path: str | Path) -> VideoInfo:
    """Header facts of every video stream (PyAV); raises VideoError if FFmpeg cannot open the file."""
    path = str(path)
    with _open(path) as container:
        streams = []
        for s in _video_streams(container):
            cc, sar = s.codec_context, s.sample_aspect_ratio or s.codec_context.sample_aspect_ratio
            rate = s.average_rate or s.guessed_rate
            streams.append(VideoStream(width=cc.width, height=cc.height,
                                       sar=Fraction(sar) if sar and sar > 0 else Fraction(1),
                                       rotation=_rotation(container, s), fps=float(rate) if rate else 0.0,
                                       codec=cc.name, pix_fmt=cc.pix_fmt or "?"))
            container.seek(0)
        if not streams:
            raise VideoError("no video stream in file")
        duration = container.duration / 1e6 if container.duration else None  # in AV_TIME_BASE units
        return VideoInfo(path=path, container=container.format.name, duration=duration, streams=tuple(streams))


@dataclass(frozen=True)
class DecodeCheck:
    frames: int  # frames that actually decode
    decoded_duration: float  # seconds of decodable video
    errors: tuple[str, ...]  # decoder error lines (first few)


@contextmanager
def _decoder_errors():
    """FFmpeg's error-level messages while decoding, as "[component] message" lines. Decoders conceal most
    damage and only log it, so the log is where a corrupt stream shows."""
    import av.logging

    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=False) as logs:  # frame threads log from threads of their own
            lines: list[str] = []
            yield lines
        lines += [f"[{name}] {message.strip()}" for level, name, message in logs
                  if level <= av.logging.ERROR and message.strip()]
    finally:
        av.logging.set_level(previous)


def _decode(container, stream, errors: list[str]):
    """Every frame of `stream` that decodes; a packet the decoder rejects is noted in `errors` and skipped, as
    the ffmpeg command line does, so the frames after it still count."""
    import av

    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.error.InvalidDataError as exc:
                errors.append(f"[{stream.codec_context.name}] {exc.strerror}")
    except av.error.FFmpegError as exc:  # the demuxer cannot read on: a truncated or damaged file
        errors.append(f"[{container.format.name}] {exc.strerror}")


def _main_stream(container):
    """The stream FFmpeg and decord read by default: the one with the most pixels."""
    streams = _video_streams(container)
    if not streams:
        raise VideoError("no video stream in file")
    return max(streams, key=lambda s: s.codec_context.width * s.codec_context.height)


def decode_check(path: str | Path) -> DecodeCheck:
    """Decode the whole default video stream, discarding the pictures: the ground truth of what is readable."""
    frames, first, end = 0, None, 0.0
    with _open(str(path)) as container, _decoder_errors() as errors:
        stream = _main_stream(container)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        for frame in _decode(container, stream, errors):
            frames += 1
            if frame.time is not None:
                first = frame.time if first is None else first
                lasts = float(frame.duration * frame.time_base) if frame.duration else 1 / rate
                end = max(end, frame.time + lasts)
    return DecodeCheck(frames=frames, decoded_duration=end - first if first is not None else 0.0,
                       errors=tuple(errors[:5]))


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


def _display(frame) -> np.ndarray:
    """A decoded frame as uint8 HxWx3 RGB, turned as its display matrix says (the ffmpeg command line's
    autorotate; decord does the same). FFmpeg's angle is counter-clockwise, as numpy's rot90."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = int(round(frame.rotation / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _read_pyav(path: str, k: int, info: VideoInfo) -> Keyframes:
    """Two passes: timestamps of every decodable frame, then only the selected ones as RGB."""
    with _open(path) as container, _decoder_errors() as errors:
        pts = [frame.time for frame in _decode(container, _main_stream(container), errors)]
    if not pts:
        raise VideoError("FFmpeg decoded no frames")
    if errors:
        raise VideoError(f"corrupt: decoder reported errors ({errors[0][:160]})")
    pts = np.array([np.nan if t is None else t for t in pts], dtype=np.float64)
    if not _valid_pts(pts):
        pts = np.arange(len(pts)) / (info.main_stream.fps or 25.0)
    span = float(pts[-1] - pts[0])
    if info.duration and span < 0.9 * info.duration - 0.5:
        raise VideoError(f"truncated: header says {info.duration:.2f} s, only {span:.2f} s ({len(pts)} frames) decode")
    idx = keyframe_indices(pts, k)
    wanted, by_index = set(idx.tolist()), {}
    with _open(path) as container:
        for i, frame in enumerate(_decode(container, _main_stream(container), [])):
            if i in wanted:
                by_index[i] = _display(frame)
            if len(by_index) == len(wanted):
                break
    if len(by_index) != len(wanted):
        raise VideoError(f"FFmpeg returned {len(by_index)} of {len(wanted)} selected frames on a second decode")
    return Keyframes([by_index[i] for i in idx], idx.tolist(), [round(float(pts[i]), 4) for i in idx],
                     info.main_stream.display_size, len(pts), "pyav")


def read_keyframes(path: str | Path, k: int, info: VideoInfo | None = None) -> Keyframes:
    """K keyframes at equal time intervals; decord first, PyAV if decord fails or returns flat frames."""
    path = str(path)
    info = info or probe(path)
    try:
        key = _read_decord(path, k, info)
        if not _all_flat(key.frames):
            return key
    except VideoError:
        pass
    key = _read_pyav(path, k, info)
    if _all_flat(key.frames):
        raise VideoError("every keyframe is a single flat colour (blank or undecodable video)")
    return key


def _all_flat(frames: list[np.ndarray]) -> bool:
    return all(int(f.max()) - int(f.min()) == 0 for f in frames)
