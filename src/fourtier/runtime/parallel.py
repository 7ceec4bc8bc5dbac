"""Work on several cores, with a progress bar: per-item work (`map_progress`: decoding, tiling, SynthAct) and
independent training runs side by side (`run_slots`, `run_parallel`: the arms and seeds of align and finetune)."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
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


ITEMS_PER_WORKER = 256  # items a map_progress worker process takes before a new one replaces it


def map_progress(fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str,
                 total: int | None = None) -> Iterator[R]:
    """Yield fn(item) in input order, using `workers` processes (1 = in this process). At most `8 x workers`
    chunks of items are handed out beyond the results taken: Pool.imap alone submits every item at once and keeps
    every result until it is taken, so a caller slower than its workers (tile, on 2 cores the main process
    competes with them for the CPU) would hold the whole corpus's results (a JPEG per clip). Each worker is
    replaced after about 256 items: the decoding libraries' memory grows with the clips a process has decoded
    (tile's workers: 90 to 230 MB over 8,000 clips each), and a fresh fork of the caller starts from its size."""
    items = list(items)
    bar = tqdm(total=total or len(items), desc=desc, unit="clip", dynamic_ncols=True, mininterval=1.0)
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        ctx = mp.get_context("fork")
        chunk = max(1, min(16, len(items) // (workers * 8)))
        slots, stop = threading.Semaphore(8 * workers * chunk), threading.Event()

        def handed_out():  # runs in the pool's task thread: it waits here while the results are not taken
            for item in items:
                slots.acquire()
                if stop.is_set():
                    return
                yield item

        with ctx.Pool(workers, initializer=_init_worker, maxtasksperchild=max(1, ITEMS_PER_WORKER // chunk)) as pool:
            try:
                for result in pool.imap(fn, handed_out(), chunksize=chunk):
                    slots.release()
                    yield result
                    bar.update()
            finally:  # a caller that stops early: the task thread must not wait forever (the pool joins it)
                stop.set()
                slots.release(len(items))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# independent training runs (the arms and seeds of align and finetune) side by side on the CPU

def run_slots(runs: int, workers: int, device_type: str, world: int = 1) -> tuple[int, int]:
    """(processes, torch threads per process) for `runs` independent training runs. On the CPU, runs side by
    side with one thread each beat one run at a time on every thread: a stage-2 step of the default model is
    compute-bound at every batch size, and two single-threaded runs do 1.25x the work of one two-threaded run on
    2 cores (benchmarks/speed_ratios.py, ratio 4). On a GPU or under torchrun: one run at a time, as before."""
    if device_type != "cpu" or world > 1 or runs <= 1:
        return 1, max(1, workers // world)
    processes = min(workers, runs)
    return processes, max(1, workers // processes)


_progress_queue = None


def _init_run_worker(threads: int, queue) -> None:
    global _progress_queue
    import torch

    torch.set_num_threads(threads)
    _progress_queue = queue


def _report_step() -> None:
    _progress_queue.put(1)


def _call_run(fn, job):
    return fn(job, _report_step)


def run_parallel(fn: Callable, jobs: list, processes: int, threads: int, desc: str, steps_per_job: int,
                 show: bool = True) -> list:
    """fn(job, step) for every job; fn calls step() once per unit of work (an epoch), which advances one bar
    shared by all jobs, and returns (summary line, value): the line is printed as the job ends, the values are
    returned in job order. processes > 1: fresh (spawned) processes with `threads` torch threads each, so no
    OpenMP state is inherited through fork; fn must be importable (a module-level function). A failing job
    stops the others and its error is raised here."""
    import queue as queue_module
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from fourtier.errors import FourtierError

    bar = tqdm(total=len(jobs) * steps_per_job, desc=desc, unit="epoch", dynamic_ncols=True, mininterval=1.0,
               disable=not show)
    try:
        if processes <= 1:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                values = []
                for job in jobs:
                    line, value = fn(job, bar.update)
                    if line and show:
                        bar.write(line)
                    values.append(value)
                return values
            finally:
                torch.set_num_threads(before)
        ctx = mp.get_context("spawn")
        progress = ctx.Queue()
        with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_run_worker,
                                 initargs=(threads, progress)) as pool:
            futures = [pool.submit(_call_run, fn, job) for job in jobs]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                while True:
                    try:
                        bar.update(progress.get_nowait())
                    except queue_module.Empty:
                        break
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    for f in pending:
                        f.cancel()
                    if isinstance(failed[0].exception(), BrokenProcessPool):
                        raise FourtierError(
                            f"{desc}: a worker process died without an error (killed, e.g. for memory: each one "
                            f"holds a run; set runtime.workers lower). Finished epochs are checkpointed: the "
                            f"same command resumes them") from None
                    raise failed[0].exception()
                for f in sorted(done, key=futures.index):
                    if f.result()[0] and show:
                        bar.write(f.result()[0])
            bar.update(bar.total - bar.n)  # steps still queued when the last job ended
            return [f.result()[1] for f in futures]
    finally:
        bar.close()
