"""Test helpers: small videos built with the project's ffmpeg, with content we know frame by frame, and an
in-memory feature source."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fourtier.video.media import run_ffmpeg

REPO = Path(__file__).resolve().parents[1]


def index_frames(n: int, height: int = 96, width: int = 160) -> np.ndarray:
    """Frame i is a flat grey of level 20 + 9*i, with a white square in the top-left corner (orientation)."""
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = 20 + 9 * i
        frames[i, : height // 4, : width // 4] = 255
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 10, pix_fmt: str = "yuv420p", codec: str = "libx264") -> Path:
    n, h, w, _ = frames.shape
    quality = ["-qp", "10"] if codec == "libx264" else []
    proc = run_ffmpeg(["-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:",
                       "-c:v", codec, *quality, "-pix_fmt", pix_fmt, str(path)], input_bytes=frames.tobytes())
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    return path


def reencode(src: Path, dst: Path, before_input: list[str] = (), after_input: list[str] = ()) -> Path:
    proc = run_ffmpeg(["-y", *before_input, "-i", str(src), *after_input, "-c:v", "libx264", "-qp", "10", str(dst)])
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    return dst


def with_rotation(src: Path, dst: Path, degrees: int) -> Path:
    """Same coded frames, plus a display-matrix rotation (stream copy: no re-encode)."""
    proc = run_ffmpeg(["-y", "-display_rotation:v:0", str(degrees), "-i", str(src), "-c", "copy", str(dst)])
    assert proc.returncode == 0, proc.stderr.decode()[-500:]
    return dst


class ArraySource:
    """The FeatureSource interface over an in-memory array (N, V, T, h, w, D)."""

    def __init__(self, m):
        self.m = m
        self.n_views = m.shape[1]

    def __len__(self):
        return len(self.m)

    def load(self, indices, views):
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return self.m[indices, np.broadcast_to(views, indices.shape)]

    def to_m(self, loaded, device=None):
        import torch

        return torch.as_tensor(loaded).float().to(device or "cpu")

    def get(self, indices, views):
        return self.to_m(self.load(indices, views))


# --- jobs for fourtier.runtime.parallel.run_parallel: module-level, so that a spawned worker can import them -------------

def sleepy_job(job, step):
    """Later jobs finish first; reports two steps; fails on a negative job; job 99 kills its own process."""
    import time

    import torch

    from fourtier.errors import DataError

    if job < 0:
        raise DataError(f"job {job} is broken: fix the job list")
    if job == 99:  # killed from outside, as the kernel's out-of-memory killer would
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05 * (5 - job))
    step()
    step()
    return f"job {job} done", (job, torch.get_num_threads())


def stage2_job(seed, step):
    """A short stage-2 run on fixed random m; returns its trained weights."""
    import torch

    from fourtier.config.base import OptimSettings
    from fourtier.models.ftp import FTP, FTPConfig
    from fourtier.train.finetune import train_classifier

    rng = np.random.default_rng(0)
    m = rng.normal(size=(24, 2, 4, 2, 3, 16)).astype(np.float32)
    labels = rng.integers(0, 3, 24)
    torch.manual_seed(seed)
    model = FTP(FTPConfig(16, (4, 2, 3), ["A", "C"], n_classes=3))
    train_classifier(model, ArraySource(m), np.arange(24), labels, OptimSettings(2, 8, 1e-2, 0.05, (0.9, 0.999), 0),
                     seed=seed, label_smoothing=0.1, mixup_alpha=0.8, mixup_prob=0.5, on_epoch=step)
    return "", {k: v.clone() for k, v in model.state_dict().items()}


class served_directory:
    """`with served_directory(root) as url`: files under root over HTTP on 127.0.0.1 (a dataset's mirror)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __enter__(self) -> str:
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        handler = functools.partial(SimpleHTTPRequestHandler, directory=str(self.root))
        handler.log_message = lambda *a: None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ucf_mirror(www: Path, build: Path, classes: list[str], groups: int = 3) -> None:
    """A UCF-101-style archive (UCF101.tar.gz) and split zip (splits.zip) in www: `groups` videos per class,
    v_<class>_g0<g>_c01.avi; official split k tests on group k and trains on the others (every video is in every
    split, as in UCF-101)."""
    import tarfile
    import zipfile

    videos = build / "UCF-101"
    for c, cls in enumerate(classes):
        (videos / cls).mkdir(parents=True)
        for g in range(1, groups + 1):
            write_video(videos / cls / f"v_{cls}_g0{g}_c01.avi", index_frames(12, 48, 64) // (1 + c), codec="mpeg4")
    with tarfile.open(www / "UCF101.tar.gz", "w:gz") as tf:
        tf.add(videos, arcname="UCF-101")
    with zipfile.ZipFile(www / "splits.zip", "w") as zf:
        zf.writestr("ucfTrainTestlist/classInd.txt", "".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
        for k in range(1, 4):
            train = [f"{c}/v_{c}_g0{g}_c01.avi {i}" for i, c in enumerate(classes, 1) for g in range(1, groups + 1) if g != k]
            test = [f"{c}/v_{c}_g0{k}_c01.avi" for c in classes]
            zf.writestr(f"ucfTrainTestlist/trainlist0{k}.txt", "\r\n".join(train) + "\r\n")
            zf.writestr(f"ucfTrainTestlist/testlist0{k}.txt", "\r\n".join(test) + "\r\n")


# HMDB51's split files tag each video per split: 1 train, 2 test, 0 not used. Video a, b, c of every class:
HMDB_TAGS = {1: {"a": 1, "b": 2, "c": 0}, 2: {"a": 0, "b": 1, "c": 2}, 3: {"a": 2, "b": 0, "c": 1}}


def hmdb_mirror(www: Path, build: Path, classes: list[str]) -> None:
    """An HMDB51-style archive (hmdb51.tar.gz, a folder per class) and split archive (splits.zip with
    testTrainMulti_7030_splits/<class>_test_split<k>.txt, tagged as HMDB_TAGS says)."""
    import tarfile
    import zipfile

    videos = build / "hmdb51"
    for c, cls in enumerate(classes):
        (videos / cls).mkdir(parents=True)
        for v in "abc":
            write_video(videos / cls / f"{v}.avi", index_frames(12, 48, 64) // (1 + c), codec="mpeg4")
    with tarfile.open(www / "hmdb51.tar.gz", "w:gz") as tf:
        tf.add(videos, arcname="hmdb51")
    with zipfile.ZipFile(www / "splits.zip", "w") as zf:
        for cls in classes:
            for k, tags in HMDB_TAGS.items():
                zf.writestr(f"testTrainMulti_7030_splits/{cls}_test_split{k}.txt",
                            "".join(f"{v}.avi {t} \n" for v, t in tags.items()))


def counted(item):
    """map_progress's job in tests/test_parallel.py: counts the items started, in every worker (a forked
    shared counter), and returns the item with a 4 KB payload."""
    with STARTED.get_lock():
        STARTED.value += 1
    return item, b"x" * 4096


def _shared_counter():
    import multiprocessing as mp

    return mp.get_context("fork").Value("i", 0)


STARTED = _shared_counter()
