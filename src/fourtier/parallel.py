"""One way to run per-item work on several cores, with a progress bar."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def _init_worker() -> None:
    # one torch thread per process: the processes already use every core (the environment variable
    # alone comes too late once torch is loaded)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def map_progress(fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str,
                 total: int | None = None) -> Iterator[R]:
    """Yield fn(item) in input order, using `workers` processes (1 = in this process)."""
    items = list(items)
    bar = tqdm(total=total or len(items), desc=desc, unit="clip", dynamic_ncols=True, mininterval=1.0)
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            chunk = max(1, min(16, len(items) // (workers * 8)))
            for result in pool.imap(fn, items, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()
