"""The `openai` VLM backend: GPT-4o/4.1 or any OpenAI-compatible server (vLLM, Ollama, `transformers serve`).

The tile goes as a base64 JPEG data URL with the prompt, through the official async client. `concurrency`
requests are in flight at all times: each of that many workers takes the next request from the stream the
moment its last answer is back, so the caller's chunks (fourtier.caption.runner) follow one another without a
tail of idle slots. Rate limits (429), server errors (5xx), timeouts, dropped connections and
malformed replies are retried with exponential backoff and jitter, honouring Retry-After. Authentication
and request errors (401/403/400/404/422) are not retried: the stage stops with a message saying what to fix.
A server that cannot be connected to at all (refused, no such host, or no connection within `CONNECT_TIMEOUT`,
as at a blackholed address) while it has not answered once in this run is unreachable: a few quick tries over
at most `UNREACHABLE_AFTER` seconds, then the stage stops, naming base_url. Once it has answered, a lost
connection is retried like any transient fault. A server that accepts connections but is slow to answer is
waited for (`timeout` per attempt) and retried: that is what a busy server looks like.
The API key comes from the environment only (api_key_env, default OPENAI_API_KEY) and never reaches an
output, a log or an error message.

Preset keys (all optional but model): model, base_url, api_key_env, concurrency, max_retries, timeout,
retry_base_delay, retry_max_delay, detail (low/high/auto), price_input_per_mtok, price_output_per_mtok, and
mode (sync, or batch: the Batch API, cheaper and slower, for large jobs). The answer cache's key holds the
model, the prompt, the image and `settings` (max_tokens, temperature, detail; joint): not base_url, so a server
that moves to another host, or a vLLM server that replaces a hosted one under the same model name, keeps its
answers.

Batch mode fills batches from the request stream, across the caller's chunks, each cut at batch_max_requests
(default 50,000, the Batch API's limit) or batch_max_mb of JSONL (default 190; the API takes input files up
to 200 MB, and a request carries its image as base64, about 27 KB for a 5-frame tile), and keeps up to
batch_concurrency (default 4) batches submitted and not yet collected; each is polled every
batch_poll_seconds (default 60). Before a batch is created, its uploaded file's id and its requests' (key,
video_id, prompt_id) are written to a state file under cache_dir()/batches, and the batch's id the moment the
server accepts it (a file that a kill left without one is matched to the server's batch by the uploaded file,
or the batch is created from that file then). A run first collects the batches such files name for this model
and server (a killed run's), puts their answers in the cache, and never submits their requests again; a file
is removed once its batch's answers are delivered.
"""
from __future__ import annotations

import asyncio
import base64
import email.utils
import importlib
import json
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Iterable

from fourtier.caption.backend import OnRecord, Record, Request, VLMError
from fourtier.caption.secrets import redact, register_secret

# answers a server can give that are worth asking again
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
CONNECT_TIMEOUT = 5.0  # s to open a connection (at most `timeout`): a server that is up accepts in milliseconds
UNREACHABLE_TRIES = 3  # connection attempts, while the server has never answered, before it counts as unreachable
UNREACHABLE_AFTER = 8.0  # ... or seconds of them, whichever comes first


def cannot_connect(exc) -> BaseException | None:
    """The transport error underneath when `exc` means no connection was made at all (refused, unknown host,
    connect timeout), else None. A read timeout or a dropped connection means the server was reached."""
    cause = exc
    while cause is not None:
        if type(cause).__name__ in ("ConnectError", "ConnectTimeout"):  # httpx / httpx2
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


class _Malformed(Exception):
    pass


def retry_after_seconds(exc) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms headers), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAIBackend:
    def __init__(self, name: str, preset: dict, generation: dict):
        if not preset.get("model"):
            raise VLMError(f"vlms.{name} needs a 'model' (e.g. gpt-4o, or the model name your server serves)")
        self.name = name
        self.model_id = str(preset["model"])
        self.base_url = preset.get("base_url") or os.environ.get("OPENAI_BASE_URL") or None
        self.key_env = preset.get("api_key_env", "OPENAI_API_KEY")
        api_key = os.environ.get(self.key_env)
        if not api_key:
            if not self.base_url:
                raise VLMError(f"vlm {name!r}: no API key. Put it in the environment, e.g. `export {self.key_env}=...` "
                               "(never in params.yaml); for a local OpenAI-compatible server, set "
                               f"vlms.{name}.base_url (or OPENAI_BASE_URL) instead")
            api_key = "EMPTY"  # local servers usually ignore the key, but the client needs one
        register_secret(api_key)
        self._api_key = api_key
        self.concurrency = int(preset.get("concurrency", 8))
        self.max_retries = int(preset.get("max_retries", 6))
        self.timeout = float(preset.get("timeout", 60))
        self.base_delay = float(preset.get("retry_base_delay", 1.0))
        self.max_delay = float(preset.get("retry_max_delay", 60.0))
        self.detail = preset.get("detail", "low")
        self.price_in = float(preset.get("price_input_per_mtok", 0.0))
        self.price_out = float(preset.get("price_output_per_mtok", 0.0))
        self.mode = preset.get("mode", "sync")
        if self.mode not in ("sync", "batch"):
            raise VLMError(f"vlms.{name}.mode is {self.mode!r}; use sync, or batch for the Batch API")
        self.poll_seconds = float(preset.get("batch_poll_seconds", 60))
        self.batch_limit = _positive(preset, "batch_max_requests", 50000, name, int)  # the Batch API's limit
        self.batch_max_bytes = int(_positive(preset, "batch_max_mb", 190, name, float) * 1e6)  # 200 MB API limit
        self.batch_concurrency = _positive(preset, "batch_concurrency", 4, name, int)
        self.max_tokens = int(generation["max_new_tokens"])
        self.temperature = float(generation["temperature"])
        self._answered = False  # has the server answered anything (even an error) in this run?
        # what changes an answer (the cache key); never the API key, the concurrency, or where the server is
        self.settings = {"max_tokens": self.max_tokens, "temperature": self.temperature, "detail": self.detail}

    # -- cost ---------------------------------------------------------------------------------
    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.price_in / 1e6 + output_tokens * self.price_out / 1e6

    def estimate(self, requests: list[Request]) -> dict:
        """Upper-bound estimate before spending: image + prompt tokens in, max_tokens out."""
        from fourtier.caption.backend import decode_tile

        image_tokens = {}
        total_in = 0
        for r in requests:
            if r.video_id not in image_tokens:
                h, w, _ = decode_tile(r.tile_jpeg).shape
                image_tokens[r.video_id] = self._image_tokens(w, h)
            total_in += image_tokens[r.video_id] + len(r.prompt) // 4 + 10
        total_out = self.max_tokens * len(requests)
        return {"input_tokens": total_in, "output_tokens": total_out, "cost_usd": self.cost(total_in, total_out)}

    def _image_tokens(self, width: int, height: int) -> int:
        # OpenAI's published rule for GPT-4o-class models: 85 base tokens, plus 170 per 512-px tile at high detail
        if self.detail == "low":
            return 85
        scale = min(1.0, 2048 / max(width, height))
        width, height = width * scale, height * scale
        scale = min(1.0, 768 / min(width, height))
        width, height = width * scale, height * scale
        return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)

    # -- requests -------------------------------------------------------------------------------
    def _messages(self, r: Request) -> list[dict]:
        url = "data:image/jpeg;base64," + base64.b64encode(r.tile_jpeg).decode()
        return [{"role": "user", "content": [{"type": "text", "text": r.prompt},
                                             {"type": "image_url", "image_url": {"url": url, "detail": self.detail}}]}]

    def _client(self):
        from openai import AsyncOpenAI, Timeout

        timeout = Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT))
        return AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=timeout)

    def _unreachable(self, error: str, tries: int, seconds: float) -> VLMError:
        return VLMError(f"vlm {self.name!r}: cannot reach the server at {self.base_url or 'the default URL'}: it is "
                        f"unreachable ({error}; {tries} tries in {seconds:.0f} s, and it never answered). Is it "
                        "running, and is base_url right?")

    def _fatal(self, exc) -> VLMError:
        status = getattr(exc, "status_code", "?")
        message = redact(str(getattr(exc, "message", exc)))[:300]
        if status in (401, 403):
            return VLMError(f"vlm {self.name!r}: the server refused the credentials (HTTP {status}: {message}). "
                            f"Check ${self.key_env}.")
        return VLMError(f"vlm {self.name!r}: the server rejected the request (HTTP {status}: {message}). "
                        f"Check the model name {self.model_id!r} and base_url {self.base_url or '(default)'}.")

    async def _ask(self, client, r: Request) -> tuple[Record, bool]:
        """One answer with retries; returns (record, unreachable): unreachable when every attempt failed to
        connect at all and the server has not answered once in this run (then after a few quick tries only)."""
        import openai

        start = time.perf_counter()
        attempt, last_error, connection_only = 0, "", True
        while True:
            attempt += 1
            try:
                resp = await client.chat.completions.create(model=self.model_id, messages=self._messages(r),
                                                            max_tokens=self.max_tokens, temperature=self.temperature)
                self._answered = True
                choices = getattr(resp, "choices", None)
                if not choices:
                    raise _Malformed("reply has no choices")
                text = (choices[0].message.content or "").strip()
                if not text:
                    raise _Malformed("empty answer")
                usage = getattr(resp, "usage", None)
                return Record(r.video_id, r.prompt_id, text,
                              input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                              output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                              latency_s=time.perf_counter() - start, attempts=attempt), False
            except openai.APIStatusError as exc:
                self._answered = True
                if exc.status_code not in RETRYABLE_STATUS:
                    raise self._fatal(exc) from None
                last_error, connection_only = f"HTTP {exc.status_code}", False
                wait = retry_after_seconds(exc)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                cause = cannot_connect(exc)
                if cause is not None:
                    last_error = f"{type(cause).__name__}: {str(cause) or 'no connection'}"[:160]
                else:  # reached, but it timed out or dropped the connection: a transient fault
                    last_error, connection_only = type(exc).__name__ + ": " + str(exc)[:120], False
                wait = None
            except (_Malformed, openai.APIResponseValidationError, json.JSONDecodeError, AttributeError,
                    TypeError, ValueError) as exc:
                self._answered = True
                last_error, wait, connection_only = f"malformed reply: {str(exc)[:120]}", None, False
            elapsed = time.perf_counter() - start
            unreachable = connection_only and not self._answered
            if attempt > self.max_retries or (unreachable and (attempt >= UNREACHABLE_TRIES
                                                               or elapsed >= UNREACHABLE_AFTER)):
                return Record(r.video_id, r.prompt_id, "", latency_s=elapsed, attempts=attempt,
                              error=redact(last_error)), unreachable
            backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if unreachable:  # quick tries only, until the server has answered once
                backoff = min(backoff, 1.0)
            await asyncio.sleep(min(self.max_delay, wait) if wait is not None else backoff)

    async def _run_sync(self, requests: Iterable[Request], on_record: OnRecord) -> None:
        from tqdm import tqdm

        stream = iter(requests)
        total = len(requests) if hasattr(requests, "__len__") else None  # a stream has no length
        self._answered = False  # has the server answered anything (even an error) in this run?
        bar = tqdm(total=total, desc=f"caption {self.name}", unit="answer", dynamic_ncols=True, mininterval=1.0)
        client = self._client()

        async def worker():
            # the next request the moment the last answer is back: `concurrency` in flight while the stream lasts
            for r in stream:
                record, unreachable = await self._ask(client, r)
                on_record(r, record)
                bar.update()
                if unreachable and not record.ok and not self._answered:
                    raise self._unreachable(record.error, record.attempts, record.latency_s)

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, total or self.concurrency))]
        try:
            await asyncio.gather(*tasks)
        finally:
            await _wind_down(tasks, bar, client)

    # -- the Batch API ------------------------------------------------------------------------
    def _server(self) -> str:
        # a batch id means something only to the server that made it; kept in state files, so never a secret
        return redact(self.base_url or "default")

    def _batch_line(self, r: Request) -> bytes:
        return json.dumps({"custom_id": r.key, "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": self.model_id, "messages": self._messages(r),
                                    "max_tokens": self.max_tokens, "temperature": self.temperature}}).encode() + b"\n"

    def pending_batches(self, state_dir: Path) -> list[tuple[Path, dict]]:
        """The batches that state files under `state_dir` record as submitted to this server for this model and
        not yet collected (a killed run's)."""
        found = []
        for path in sorted(state_dir.glob("*.json")):
            try:
                state = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise VLMError(f"{path} is not a readable batch state file ({exc}). It records a submitted batch: "
                               "repair it, or delete it if that batch is no longer wanted, and run again") from None
            if not isinstance(state.get("requests"), list):  # an older version's file: a count, not the requests
                print(f"note: {path} (batch {state.get('batch_id')}, written by an older fourtier) is left alone; "
                      "its answers are asked again", flush=True)
                continue
            if state.get("model") == self.model_id and state.get("server") == self._server():
                found.append((path, state))
        return found

    async def _run_batch(self, requests: Iterable[Request], on_record: OnRecord) -> None:
        import openai
        from tqdm import tqdm

        from fourtier.paths import cache_dir

        state_dir = cache_dir() / "batches"
        state_dir.mkdir(parents=True, exist_ok=True)
        client = self._client()
        bar = tqdm(desc=f"batch {self.name}", unit="answer", dynamic_ncols=True)
        running: set[asyncio.Task] = set()  # one task per submitted batch: polls it, then delivers its answers

        def collect(path: Path, state: dict) -> None:
            running.add(asyncio.ensure_future(self._collect(client, path, state, on_record, bar)))

        try:
            pending = [(path, state) for path, state in self.pending_batches(state_dir)
                       if state.get("batch_id") or await self._resume(client, path, state)]
            skip = {entry[0] for _, state in pending for entry in state["requests"]}  # answered by those batches
            for path, state in pending:
                print(f"collecting batch {state['batch_id']} ({len(state['requests'])} requests), submitted by an "
                      "earlier run", flush=True)
                collect(path, state)
            batch = _BatchFile()
            for n, r in enumerate(requests):
                if r.key in skip:
                    continue
                line = self._batch_line(r)
                if len(line) > self.batch_max_bytes:
                    raise VLMError(f"vlm {self.name!r}: one batch request is {len(line) / 1e6:.1f} MB, more than "
                                   f"vlms.{self.name}.batch_max_mb allows; raise it (the Batch API takes files up to "
                                   "200 MB) or make the tiles smaller (tile.height)")
                if batch.entries and (batch.count >= self.batch_limit or
                                      batch.size + (0 if r.key in batch.keys else len(line)) > self.batch_max_bytes):
                    await self._submit(client, batch, state_dir, running, collect)
                    batch = _BatchFile()
                batch.add(r, line)
                if n % 256 == 0:
                    await asyncio.sleep(0)  # let the pollers run while a large batch fills
            if batch.entries:
                await self._submit(client, batch, state_dir, running, collect)
            while running:
                await _finish_one(running)
        except openai.APIStatusError as exc:
            raise self._fatal(exc) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            cause = cannot_connect(exc)
            what = "it is unreachable" if cause is not None else "the connection failed"
            raise VLMError(f"vlm {self.name!r}: cannot reach the server at "
                           f"{self.base_url or 'the default URL'}: {what} ({type(cause or exc).__name__}); "
                           f"every batch submitted so far is kept in {state_dir}, so a re-run collects it "
                           "instead of paying for it again") from None
        finally:
            await _wind_down(running, bar, client)

    async def _submit(self, client, batch: "_BatchFile", state_dir: Path, running: set, collect) -> None:
        """Upload and create one batch once fewer than batch_concurrency are out. Its state file is written
        before the batch is created (with the uploaded file's id) and again with the batch's id the moment the
        server accepts it, so a kill at any point leaves a file that the next run resolves (`_resume`)."""
        from tqdm import tqdm

        while len(running) >= self.batch_concurrency:
            await _finish_one(running)
        upload = await client.files.create(file=("requests.jsonl", batch.content()), purpose="batch")
        state = {"batch_id": None, "model": self.model_id, "server": self._server(), "input_file_id": upload.id,
                 "submitted_at": time.time(), "requests": batch.entries}
        path = state_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", upload.id) + ".json")
        _write_state(path, state)
        await self._create(client, path, state)
        tqdm.write(f"submitted batch {state['batch_id']}: {batch.count} requests, {batch.size / 1e6:.1f} MB")
        collect(path, state)

    async def _create(self, client, path: Path, state: dict) -> None:
        created = await client.batches.create(input_file_id=state["input_file_id"], endpoint="/v1/chat/completions",
                                              completion_window="24h")
        state["batch_id"] = created.id
        _write_state(path, state)

    async def _resume(self, client, path: Path, state: dict) -> bool:
        """A state file without a batch id: the run that wrote it was killed around `batches.create`. The
        server's batch made from its uploaded file is adopted; if there is none, the batch is created now from
        that file. Returns False when the file is gone from the server (its requests are asked again)."""
        import openai

        async for batch in client.batches.list(limit=100):
            if batch.input_file_id == state["input_file_id"]:
                state["batch_id"] = batch.id
                _write_state(path, state)
                return True
        try:
            await self._create(client, path, state)
        except openai.NotFoundError:
            path.unlink(missing_ok=True)
            return False
        return True

    async def _collect(self, client, path: Path, state: dict, on_record: OnRecord, bar) -> None:
        """Wait for one batch, give each of its requests its answer (or a failure), then forget the batch."""
        batch = await self._wait(client, state["batch_id"])
        text = (await client.files.content(batch.output_file_id)).text if batch.output_file_id else ""
        waiting: dict[str, list] = {}
        for entry in state["requests"]:  # a key can stand for several requests (tiles with the same bytes)
            waiting.setdefault(entry[0], []).append(entry)
        for line in text.splitlines():
            answer = self._batch_answer(line)
            for entry in waiting.pop(answer[0], []) if answer else []:
                on_record(_request_of(entry), Record(entry[1], entry[2], *answer[1:]))
                bar.update()
        for entries in waiting.values():  # no line in the output: failed, expired or cancelled
            for entry in entries:
                on_record(_request_of(entry), Record(entry[1], entry[2], "", error=f"batch {batch.status}: no answer"))
                bar.update()
        path.unlink(missing_ok=True)

    async def _wait(self, client, batch_id: str):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                return batch
            await asyncio.sleep(self.poll_seconds)

    @staticmethod
    def _batch_answer(line: str) -> tuple | None:
        """(custom_id, answer, input_tokens, output_tokens, latency_s, attempts, error) of one output line."""
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(item, dict) or "custom_id" not in item:
            return None
        response = item.get("response") or {}
        body = response.get("body") or {}
        choices = body.get("choices") or []
        text = ((choices[0].get("message") or {}).get("content") or "").strip() if choices else ""
        usage = body.get("usage") or {}
        error = "" if response.get("status_code") == 200 and text else redact(
            str(item.get("error") or f"HTTP {response.get('status_code')}: empty or missing answer"))[:200]
        return (item["custom_id"], text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                0.0, 1, error)

    def run(self, requests: Iterable[Request], on_record: OnRecord) -> None:
        try:
            importlib.import_module("openai")
        except ImportError as exc:
            raise VLMError(f"vlm {self.name!r} needs the openai package, which does not import ({exc}): "
                           "pip install openai") from None
        if self.mode == "batch":
            asyncio.run(self._run_batch(requests, on_record))
        else:
            asyncio.run(self._run_sync(requests, on_record))


class _BatchFile:
    """One batch being filled: its JSONL lines and the (key, video_id, prompt_id[, parts]) of each request."""

    def __init__(self):
        self.lines: list[bytes] = []
        self.entries: list[list] = []
        self.keys: set[str] = set()
        self.size = 0
        self.count = 0  # lines: a request whose key is already in the file adds none

    def add(self, r: Request, line: bytes) -> None:
        self.entries.append([r.key, r.video_id, r.prompt_id] + ([[list(p) for p in r.parts]] if r.parts else []))
        if r.key not in self.keys:  # custom_id must be unique within a batch
            self.keys.add(r.key)
            self.lines.append(line)
            self.size += len(line)
            self.count += 1

    def content(self) -> bytes:
        return b"".join(self.lines)


def _request_of(entry: list) -> Request:
    """The request a state file entry stands for, as much of it as an answer needs (no image, no prompt)."""
    parts = tuple(tuple(p) for p in entry[3]) if len(entry) > 3 else ()
    return Request(entry[1], entry[2], "", b"", 0, entry[0], parts=parts)


def _write_state(path: Path, state: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state))
    os.replace(partial, path)  # all or nothing: a kill never leaves half a state file


async def _wind_down(tasks, bar, client) -> None:
    """The end of a run, finished or failed: cancel the tasks still running, wait for them, close the progress
    bar and the client."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    bar.close()
    await client.close()


async def _finish_one(running: set) -> None:
    """Wait until one of the running batch tasks is done; its failure is raised here."""
    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        running.discard(task)
        task.result()


def _positive(preset: dict, key: str, default, name: str, kind):
    value = preset.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
            (kind is int and value != int(value)):
        what = "a whole number of at least 1" if kind is int else "a number above 0"
        raise VLMError(f"vlms.{name}.{key} is {value!r}; use {what}")
    return kind(value)
