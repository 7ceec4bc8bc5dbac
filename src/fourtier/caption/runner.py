"""The caption stage's machinery: the answer cache, the run over missing answers, the output table.

Every answer is committed to a content-addressed SQLite cache the moment it arrives. Its key is a hash
of the tile bytes, the prompt text, the model and the generation settings. A killed run loses nothing
paid for; a re-run asks only for what is missing, and a re-run with nothing changed makes zero calls.
The DVC output (captions.jsonl) is rebuilt from the cache, so it is the same whatever was cached when.

`caption_chunks` streams: it looks each chunk of requests up in the cache as the backend reaches it and hands
the backend only the missing ones, one lazy iterable across chunk boundaries, so a server is kept at its
concurrency from the first request to the last while memory holds a chunk plus what is in flight.
caption.max_failures is checked as answers arrive, over the requests seen so far: once exceeded, nothing new is
sent, what is in flight finishes and is cached, and the stage stops. Joint mode goes chunk by chunk (each
chunk's joint requests, then the separate requests for the tiles whose reply did not parse), as does a torchrun
group (`run_captions_ranked`).

The cache lives outside the repository (default ~/.cache/fourtier, or $FOURTIER_CACHE) so that queued
`dvc exp run`s, which run in temporary copies, share it; `dvc push` shares the outputs with a team.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

from fourtier.caption.backend import Record, Request
from fourtier.caption.joint import JOINT_ID, joint_prompt, parse_joint
from fourtier.caption.secrets import redact
from fourtier.config.base import PROMPT_IDS
from fourtier.data.store import ItemReader
from fourtier.errors import DataError
from fourtier.paths import cache_dir
from fourtier.runtime.heap import release_free_heap
from fourtier.video.tiling import iter_tile_index


def answer_key(tile_jpeg: bytes, prompt: str, model_id: str, settings: dict) -> str:
    """The content address of an answer: the image, the prompt, the model and what changes the answer (the
    backend's `settings`, never where the server is or how fast it is)."""
    return _key(hashlib.sha256(tile_jpeg).digest(), prompt, model_id, settings)


def _key(image_digest: bytes, prompt: str, model_id: str, settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(image_digest)
    digest.update(json.dumps({"prompt": prompt, "model": model_id, "settings": settings}, sort_keys=True).encode())
    return digest.hexdigest()


LOCK_WAIT_S = 60  # how long an AnswerCache waits for another process's lock on the file


class AnswerCache:
    """key -> record (JSON), one row per answer; WAL mode so parallel experiments can share it."""

    def __init__(self, path: Path | None = None):
        path = Path(path or cache_dir() / "answers.sqlite")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
        # Switching to WAL takes an exclusive lock, and SQLite answers "database is locked" at once, without its
        # busy wait, when another process (another rank, another experiment) opens the same file at that moment:
        # so the setup is retried, for as long as the connection's own timeout.
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        found = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self.db.execute(f"SELECT key, record FROM answers WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put(self, key: str, record: dict) -> None:
        # autocommit: the answer is on disk when this returns
        self.db.execute("INSERT OR REPLACE INTO answers (key, record) VALUES (?, ?)", (key, json.dumps(record)))

    def close(self) -> None:
        self.db.close()


def build_requests(tile_dir: Path, k: int, prompts: dict[str, str], model_id: str, settings: dict,
                   chunk: int = 1024) -> Iterator[list[Request]]:
    """One request per (tiled video, prompt), always all four prompts, `chunk` tiles at a time: only one
    chunk's images and index rows are in memory, whatever the corpus size."""
    reader = ItemReader(tile_dir)
    try:
        requests, tiles, any_tile = [], 0, False
        for row in iter_tile_index(tile_dir):
            if row["status"] != "ok":
                continue
            jpeg = reader.get(row["location"])
            image = hashlib.sha256(jpeg).digest()  # once per tile, not per prompt: the same keys as answer_key
            for pid in PROMPT_IDS:
                requests.append(Request(row["video_id"], pid, prompts[pid], jpeg, k,
                                        _key(image, prompts[pid], model_id, settings)))
            tiles += 1
            if tiles == chunk:
                yield requests
                requests, tiles, any_tile = [], 0, True
                release_free_heap()  # the last chunk's images are gone: their pages back to the system
        if requests:
            yield requests
        elif not any_tile:
            raise DataError(f"{tile_dir} has no tiles to caption")
    finally:
        reader.close()


def _new_stats() -> dict:
    return {"requests": 0, "cached": 0, "called": 0, "failed": 0, "first_errors": [], "seconds": 0.0}


def _note_failure(stats: dict, request: Request, record: Record) -> None:
    record.error = redact(record.error or "empty answer")
    stats["failed"] += 1
    if len(stats["first_errors"]) < 5:
        stats["first_errors"].append(f"{request.video_id}/{request.prompt_id}: {record.error}")


def run_captions(backend, requests: list[Request], cache: AnswerCache, max_failures: float) -> dict:
    """Ask the backend for every answer of `requests` (one chunk) not in the cache; returns counts for the
    metrics. caption_chunks over that one chunk."""
    return caption_chunks(backend, [requests], cache, max_failures)


def caption_chunks(backend, chunks: Iterable[list[Request]], cache: AnswerCache, max_failures: float) -> dict:
    """Ask the backend for every answer not in the cache, over a stream of chunks (build_requests), as one lazy
    stream of missing requests: a chunk is looked up in the cache when the backend reaches it, so the backend
    keeps its concurrency across chunk boundaries. Failures are counted over the requests seen so far; once more
    failed than caption.max_failures allows, no new request is sent, those in flight finish (their answers are
    cached: they are paid for), and a DataError says so. Joint mode goes chunk by chunk. Returns counts."""
    if getattr(backend, "joint", False):
        total = _new_stats()
        for requests in chunks:
            part = _run_chunk_jointly(backend, requests, cache, max_failures)
            for key, value in part.items():
                total[key] = total[key] + value if key in total else value
            total["first_errors"] = total["first_errors"][:5]
        return total
    stats = _new_stats()
    stopped = []  # non-empty once the failures are over the limit: the stream ends, in-flight requests finish

    def missing() -> Iterator[Request]:
        stream = iter(chunks)
        try:
            for requests in stream:
                if stopped:
                    return
                stats["requests"] += len(requests)
                ask = [requests[i] for i in missing_positions(requests, cache)]
                stats["cached"] += len(requests) - len(ask)
                for r in ask:
                    if stopped:
                        return
                    yield r
        finally:
            if hasattr(stream, "close"):  # build_requests closes its tile reader
                stream.close()

    def on_record(request: Request, record: Record) -> None:
        stats["called"] += 1
        if record.ok:
            cache.put(request.key, asdict(record))
            return
        _note_failure(stats, request, record)  # failures are not cached: the next run asks again
        if stats["failed"] > int(max_failures * stats["requests"]):
            stopped.append(True)

    start = time.perf_counter()
    stream = missing()
    try:
        backend.run(stream, on_record)
    finally:
        stream.close()
        stats["seconds"] = time.perf_counter() - start
    check_failures(stats, stats["called"], stats["requests"], max_failures)
    return stats


def _run_chunk_jointly(backend, requests: list[Request], cache: AnswerCache, max_failures: float) -> dict:
    """Joint mode, one chunk: a joint request per tile with missing answers, then separate requests for the
    tiles whose reply failed or did not parse. Failures are checked over the chunk once it is done."""
    missing = [requests[i] for i in missing_positions(requests, cache)]
    stats = {**_new_stats(), "requests": len(requests), "cached": len(requests) - len(missing)}

    def on_record(request: Request, record: Record) -> None:
        stats["called"] += 1
        if not record.ok:
            _note_failure(stats, request, record)
            return  # failures are not cached: the next run asks again
        # only a joint reply that did not parse leads to a separate request
        record.extra = {**record.extra, "joint": "fallback"}
        paid_in, paid_out = unparsed.pop(request.video_id, (0, 0))  # that reply's tokens: paid, so counted
        record.input_tokens += paid_in
        record.output_tokens += paid_out
        cache.put(request.key, asdict(record))

    start = time.perf_counter()
    unparsed: dict[str, tuple[int, int]] = {}
    if missing:  # what is left: the tiles whose reply did not parse
        missing = _ask_jointly(backend, missing, cache, stats, unparsed)
    if missing:
        backend.run(missing, on_record)
    stats["seconds"] = time.perf_counter() - start
    check_failures(stats, len(missing), len(requests), max_failures)
    return stats


def check_failures(stats: dict, asked: int, requests: int, max_failures: float) -> None:
    """Stop when more requests failed than caption.max_failures allows (a fraction of the `requests` seen)."""
    allowed = int(max_failures * requests)
    if stats["failed"] > allowed:
        raise DataError(f"{stats['failed']} of {asked} caption requests failed after retries "
                        f"(caption.max_failures allows {allowed}); answers received so far are cached, so a "
                        f"re-run asks only for the rest. First errors: " + "; ".join(stats["first_errors"]))


def run_captions_ranked(backend, requests: list[Request], cache: AnswerCache, max_failures: float,
                        private_dir: Path) -> dict:
    """run_captions across the ranks of a torchrun group (a model per GPU, the `hf` backend): rank 0's cache
    decides what is missing; the missing requests go out in the backend's own batches, batch j to rank
    j mod W, so every batch is the one a single process would generate; each rank asks its batches into a
    private cache (private_dir) and rank 0 puts every answer into the one answer cache. Rank 0 then writes the
    chunk from that cache, as one process does. Returns the summed counts (on every rank)."""
    from fourtier.runtime import distributed

    if distributed.world() == 1:
        return run_captions(backend, requests, cache, max_failures)
    missing = None
    if distributed.is_main():
        missing = missing_positions(requests, cache)
    missing = distributed.broadcast_object(missing)
    size = int(getattr(backend, "batch_size", 1))
    batches = [missing[start:start + size] for start in range(0, len(missing), size)]
    mine = [requests[i] for batch in batches[distributed.rank()::distributed.world()] for i in batch]
    private_dir.mkdir(parents=True, exist_ok=True)
    # kept across a crash (named by rank, not by run): a rank that is dealt the same batch again finds it there
    private = AnswerCache(private_dir / f"rank-{distributed.rank()}.sqlite")
    try:  # failures are counted over the whole chunk below, as one process counts them
        stats = run_captions(backend, mine, private, 1.0) if mine else \
            {"requests": 0, "cached": 0, "called": 0, "failed": 0, "first_errors": [], "seconds": 0.0}
        answers = private.get_many([r.key for r in mine])
    finally:
        private.close()
    gathered = distributed.gather_objects((answers, stats))
    if distributed.is_main():
        for rank_answers, _ in gathered:
            for key, record in rank_answers.items():
                cache.put(key, record)
    total = {"requests": len(requests), "cached": len(requests) - len(missing),
             "called": sum(s["called"] for _, s in gathered), "failed": sum(s["failed"] for _, s in gathered),
             "first_errors": [e for _, s in gathered for e in s["first_errors"]][:5],
             "seconds": max(s["seconds"] for _, s in gathered)}
    distributed.barrier()
    check_failures(total, len(missing), len(requests), max_failures)  # every rank alike, the answers safe in the cache
    return total


def joint_requests(requests: list[Request]) -> tuple[list[Request], dict[str, list[Request]]]:
    """One joint request per tile for `requests` (per-prompt requests), and each tile's per-prompt requests.
    A joint request's `parts` name the per-prompt answers it carries, so that its reply can be put in the cache
    without them (a Batch API batch collected by a later run)."""
    by_video: dict[str, list[Request]] = {}
    for r in requests:
        by_video.setdefault(r.video_id, []).append(r)
    prompts = {r.prompt_id: r.prompt for rs in by_video.values() for r in rs}
    asked = []
    for video_id, rs in by_video.items():
        texts = {**prompts, **{r.prompt_id: r.prompt for r in rs}}
        key = hashlib.sha256("".join(r.key for r in rs).encode()).hexdigest()  # the joint reply is never cached
        asked.append(Request(video_id, JOINT_ID, joint_prompt(texts), rs[0].tile_jpeg, rs[0].K, key,
                             parts=tuple((r.prompt_id, r.key) for r in rs)))
    return asked, by_video


def _ask_jointly(backend, missing: list[Request], cache: AnswerCache, stats: dict,
                 unparsed: dict[str, tuple[int, int]]) -> list[Request]:
    """Joint mode: each tile's four prompts in one request; a parsed reply puts each answer in the cache under its
    prompt's own key (marked `joint: parsed`). Returns the per-prompt requests of the tiles whose reply failed or
    did not parse: they are asked separately, and their answers are marked `joint: fallback`. `unparsed` gets
    the tokens of each reply that did not parse, by video, to be added to that video's first separate answer.
    A reply to a joint request of another chunk (a batch a killed run submitted) is cached when it parses; when it
    does not, its tile is asked again when its chunk comes."""
    asked, by_video = joint_requests(missing)
    ours = {r.key for r in asked}
    fallback: list[Request] = []
    stats.update(joint_requests=len(asked), joint_parsed=0)

    def on_joint(request: Request, record: Record) -> None:
        parts = parse_joint(record.answer) if record.ok else None
        if request.key not in ours:  # another chunk's, collected from a pending batch
            if parts is not None and request.parts:
                stats["called"] += len(request.parts)
                _cache_joint(cache, request.video_id, request.parts, parts, record)
            return
        wanted = by_video[request.video_id]
        if parts is None:
            fallback.extend(wanted)
            unparsed[request.video_id] = (record.input_tokens, record.output_tokens)
            return
        stats["joint_parsed"] += 1
        stats["called"] += len(wanted)
        _cache_joint(cache, request.video_id, [(r.prompt_id, r.key) for r in wanted], parts, record)

    backend.run(asked, on_joint)
    return fallback


def _cache_joint(cache: AnswerCache, video_id: str, wanted, parts: dict[str, str], record: Record) -> None:
    """The answers of a parsed joint reply under their prompts' keys; its tokens and time shared out over them."""
    wanted = list(wanted)
    for i, (prompt_id, key) in enumerate(wanted):
        share = lambda total: total // len(wanted) + (1 if i < total % len(wanted) else 0)  # noqa: E731
        cache.put(key, asdict(Record(video_id, prompt_id, parts[prompt_id],
                                     input_tokens=share(record.input_tokens),
                                     output_tokens=share(record.output_tokens),
                                     latency_s=record.latency_s / len(wanted), attempts=record.attempts,
                                     extra={"joint": "parsed"})))


def missing_positions(requests: list[Request], cache: AnswerCache) -> list[int]:
    """Positions of the requests whose answer the cache lacks (or holds unusable: a failure, an empty answer)."""
    cached = cache.get_many([r.key for r in requests])
    return [i for i, r in enumerate(requests) if r.key not in cached or not _usable(cached[r.key])]


def _usable(record: dict) -> bool:
    return not record.get("error") and bool(record.get("answer", "").strip())


def write_captions(out_dir: Path, requests: list[Request], cache: AnswerCache, vlm_name: str, model_id: str,
                   settings: dict, append: bool = False) -> dict:
    """captions.jsonl: one row per (video, prompt), in tile-index order, built from the cache (`append`: after
    the rows of the chunks before). Rows hold only what fixes the answer, never how long it took or how many
    tries it needed: the same answers give the same bytes on any machine, so nothing downstream re-runs.
    Latency and attempts are summed into the returned totals, for the stage's metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = cache.get_many([r.key for r in requests])
    totals = {"answers": 0, "missing": 0, "input_tokens": 0, "output_tokens": 0, "attempts": 0, "latency_s": 0.0,
              "joint_parsed": 0, "joint_fallback": 0}
    with open(out_dir / "captions.jsonl", "a" if append else "w") as fh:
        for r in requests:
            rec = records.get(r.key)
            row = {"video_id": r.video_id, "prompt_id": r.prompt_id, "prompt": r.prompt,
                   "answer": rec["answer"] if rec else "", "vlm": vlm_name, "model": model_id, "settings": settings,
                   "input_tokens": rec["input_tokens"] if rec else 0, "output_tokens": rec["output_tokens"] if rec else 0,
                   "error": "" if rec else "no answer (allowed by caption.max_failures)"}
            fh.write(json.dumps(row) + "\n")
            if rec:
                totals["answers"] += 1
                for k in ("input_tokens", "output_tokens", "attempts", "latency_s"):
                    totals[k] += rec[k]
                how = (rec.get("extra") or {}).get("joint")
                if how:
                    totals[f"joint_{how}"] += 1
            else:
                totals["missing"] += 1
    return totals
