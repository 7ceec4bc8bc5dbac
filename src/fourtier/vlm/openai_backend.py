"""The `openai` VLM backend: GPT-4o/4.1 or any OpenAI-compatible server (vLLM, Ollama, `transformers serve`).

The tile goes as a base64 JPEG data URL with the prompt, through the official async client. Requests run
concurrently up to `concurrency`. Rate limits (429), server errors (5xx), timeouts, dropped connections and
malformed replies are retried with exponential backoff and jitter, honouring Retry-After. Authentication
and request errors (401/403/400/404/422) are not retried: the stage stops with a message saying what to fix.
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
import json
import math
import os
import random
import time

from fourtier.vlm import OnRecord, Record, Request, VLMError, redact, register_secret

# answers a server can give that are worth asking again
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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
        from openai import AsyncOpenAI

        return AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout)

    def _fatal(self, exc) -> VLMError:
        status = getattr(exc, "status_code", "?")
        message = redact(str(getattr(exc, "message", exc)))[:300]
        if status in (401, 403):
            return VLMError(f"vlm {self.name!r}: the server refused the credentials (HTTP {status}: {message}). "
                            f"Check ${self.key_env}.")
        return VLMError(f"vlm {self.name!r}: the server rejected the request (HTTP {status}: {message}). "
                        f"Check the model name {self.model_id!r} and base_url {self.base_url or '(default)'}.")

    async def _ask(self, client, r: Request) -> tuple[Record, bool]:
        """One answer with retries; returns (record, failed_only_by_connection)."""
        import openai

        start = time.perf_counter()
        attempt, last_error, connection_only = 0, "", True
        while True:
            attempt += 1
            try:
                resp = await client.chat.completions.create(model=self.model_id, messages=self._messages(r),
                                                            max_tokens=self.max_tokens, temperature=self.temperature)
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
                if exc.status_code not in RETRYABLE_STATUS:
                    raise self._fatal(exc) from None
                last_error, connection_only = f"HTTP {exc.status_code}", False
                wait = retry_after_seconds(exc)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                last_error, wait = type(exc).__name__ + ": " + str(exc)[:120], None
                connection_only = connection_only and not isinstance(exc, openai.APITimeoutError)
            except (_Malformed, openai.APIResponseValidationError, json.JSONDecodeError, AttributeError,
                    TypeError, ValueError) as exc:
                last_error, wait, connection_only = f"malformed reply: {str(exc)[:120]}", None, False
            if attempt > self.max_retries:
                return Record(r.video_id, r.prompt_id, "", latency_s=time.perf_counter() - start, attempts=attempt,
                              error=redact(last_error)), connection_only
            backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(self.max_delay, wait) if wait is not None else backoff)

    async def _run_sync(self, requests: list[Request], on_record: OnRecord) -> None:
        from tqdm import tqdm

        queue: asyncio.Queue = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        state = {"ok": 0, "unreachable": 0}
        bar = tqdm(total=len(requests), desc=f"caption {self.name}", unit="answer", dynamic_ncols=True, mininterval=1.0)
        client = self._client()

        async def worker():
            while True:
                try:
                    r = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                record, unreachable = await self._ask(client, r)
                state["ok"] += record.ok
                state["unreachable"] += bool(unreachable and not record.ok)
                on_record(r, record)
                bar.update()
                if state["ok"] == 0 and state["unreachable"] >= min(3, len(requests)):
                    raise VLMError(f"vlm {self.name!r}: cannot reach the server at {self.base_url or 'the default URL'} "
                                   f"({record.error}). Is it running, and is base_url right?")

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
                    raise VLMError(f"vlm {self.name!r}: cannot reach the server at {self.base_url or 'the default URL'} "
                                   f"({type(exc).__name__}); the batch id, if one was submitted, is kept in "
                                   f"{state_dir}, so a re-run resumes it") from None
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
        if self.mode == "batch":
            asyncio.run(self._run_batch(requests, on_record))
        else:
            asyncio.run(self._run_sync(requests, on_record))
