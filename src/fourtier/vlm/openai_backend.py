"""The `openai` VLM backend: GPT-4o/4.1 or any OpenAI-compatible server (vLLM, Ollama, `transformers serve`).

The tile goes as a base64 JPEG data URL with the prompt, through the official async client. Requests run
concurrently up to `concurrency`. Rate limits (429), server errors (5xx), timeouts, dropped connections and
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
mode (sync, or batch: the Batch API, cheaper and slower, for large jobs) with batch_poll_seconds and
batch_max_requests. A submitted batch's id is kept under the cache folder, so a killed run resumes polling
it instead of paying for it again.
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
import time

from fourtier.vlm import OnRecord, Record, Request, VLMError, redact, register_secret

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
        self.batch_limit = int(preset.get("batch_max_requests", 50000))  # the Batch API's per-batch limit
        self.max_tokens = int(generation["max_new_tokens"])
        self.temperature = float(generation["temperature"])
        self._answered = False  # has the server answered anything (even an error) in this run?
        # what changes an answer (the cache key); never the key or the concurrency
        self.settings = {"base_url": self.base_url or "default", "max_tokens": self.max_tokens,
                         "temperature": self.temperature, "detail": self.detail}

    # -- cost ---------------------------------------------------------------------------------
    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens * self.price_in / 1e6 + output_tokens * self.price_out / 1e6

    def estimate(self, requests: list[Request]) -> dict:
        """Upper-bound estimate before spending: image + prompt tokens in, max_tokens out."""
        from fourtier.vlm import decode_tile

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

    async def _run_sync(self, requests: list[Request], on_record: OnRecord) -> None:
        from tqdm import tqdm

        queue: asyncio.Queue = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        self._answered = False  # has the server answered anything (even an error) in this run?
        bar = tqdm(total=len(requests), desc=f"caption {self.name}", unit="answer", dynamic_ncols=True, mininterval=1.0)
        client = self._client()

        async def worker():
            while True:
                try:
                    r = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                record, unreachable = await self._ask(client, r)
                on_record(r, record)
                bar.update()
                if unreachable and not record.ok and not self._answered:
                    raise self._unreachable(record.error, record.attempts, record.latency_s)

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(requests)))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
            await client.close()

    # -- the Batch API ------------------------------------------------------------------------
    async def _run_batch(self, requests: list[Request], on_record: OnRecord) -> None:
        import hashlib

        import openai

        from fourtier.paths import cache_dir

        state_dir = cache_dir() / "batches"
        state_dir.mkdir(parents=True, exist_ok=True)
        client = self._client()
        try:
            for start in range(0, len(requests), self.batch_limit):
                chunk = requests[start:start + self.batch_limit]
                job = hashlib.sha256("".join(sorted(r.key for r in chunk)).encode()).hexdigest()[:24]
                state_file = state_dir / f"{job}.json"
                try:
                    if state_file.exists():  # submitted before this run was killed: resume, never pay twice
                        batch_id = json.loads(state_file.read_text())["batch_id"]
                        print(f"resuming batch {batch_id}", flush=True)
                    else:
                        lines = [json.dumps({"custom_id": r.key, "method": "POST", "url": "/v1/chat/completions",
                                             "body": {"model": self.model_id, "messages": self._messages(r),
                                                      "max_tokens": self.max_tokens, "temperature": self.temperature}})
                                 for r in chunk]
                        upload = await client.files.create(file=("requests.jsonl", "\n".join(lines).encode()),
                                                           purpose="batch")
                        batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                            completion_window="24h")
                        batch_id = batch.id
                        state_file.write_text(json.dumps({"batch_id": batch_id, "requests": len(chunk)}))
                    batch = await self._wait(client, batch_id, len(chunk))
                    text = (await client.files.content(batch.output_file_id)).text if batch.output_file_id else ""
                except openai.APIStatusError as exc:
                    raise self._fatal(exc) from None
                except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                    cause = cannot_connect(exc)
                    what = "it is unreachable" if cause is not None else "the connection failed"
                    raise VLMError(f"vlm {self.name!r}: cannot reach the server at "
                                   f"{self.base_url or 'the default URL'}: {what} ({type(cause or exc).__name__}); "
                                   f"the batch id, if one was submitted, is kept in {state_dir}, so a re-run "
                                   "resumes it") from None
                by_key = {r.key: r for r in chunk}
                for line in text.splitlines():
                    record = self._batch_record(line, by_key)
                    if record is not None:
                        on_record(by_key.pop(record[0]), record[1])
                for r in by_key.values():  # no line in the output: failed, expired or cancelled
                    on_record(r, Record(r.video_id, r.prompt_id, "", error=f"batch {batch.status}: no answer"))
                state_file.unlink(missing_ok=True)
        finally:
            await client.close()

    async def _wait(self, client, batch_id: str, total: int):
        from tqdm import tqdm

        with tqdm(total=total, desc=f"batch {batch_id}", unit="answer", dynamic_ncols=True) as bar:
            while True:
                batch = await client.batches.retrieve(batch_id)
                counts = getattr(batch, "request_counts", None)
                done = int(getattr(counts, "completed", 0) or 0) + int(getattr(counts, "failed", 0) or 0)
                bar.update(max(0, done - bar.n))
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    return batch
                await asyncio.sleep(self.poll_seconds)

    @staticmethod
    def _batch_record(line: str, by_key: dict) -> tuple[str, Record] | None:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            return None
        r = by_key.get(item.get("custom_id"))
        if r is None:
            return None
        response = item.get("response") or {}
        body = response.get("body") or {}
        choices = body.get("choices") or []
        text = ((choices[0].get("message") or {}).get("content") or "").strip() if choices else ""
        usage = body.get("usage") or {}
        error = "" if response.get("status_code") == 200 and text else redact(
            str(item.get("error") or f"HTTP {response.get('status_code')}: empty or missing answer"))[:200]
        return r.key, Record(r.video_id, r.prompt_id, text, input_tokens=int(usage.get("prompt_tokens", 0)),
                             output_tokens=int(usage.get("completion_tokens", 0)), error=error)

    def run(self, requests: list[Request], on_record: OnRecord) -> None:
        try:
            importlib.import_module("openai")
        except ImportError as exc:
            raise VLMError(f"vlm {self.name!r} needs the openai package, which does not import ({exc}): "
                           "pip install openai") from None
        if self.mode == "batch":
            asyncio.run(self._run_batch(requests, on_record))
        else:
            asyncio.run(self._run_sync(requests, on_record))
