"""A local OpenAI-compatible chat server for fault tests: scripted replies, every call counted.

Binds 127.0.0.1 only. `script(n, key)` chooses the reply to call number n (0-based) for the request
with content key `key`: "ok", "429", "500", "hang", "malformed", "empty", "401". `delay` is the seconds every
answer takes, or a function of the key. Each call records when it started and ended and how many were in flight
as it started, so a test can read the concurrency the server saw over time. The Batch API part counts the
batches submitted and not yet completed, and their peak.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog, 5, drops connections when many clients open at once


class FakeOpenAI:
    def __init__(self, script=lambda n, key: "ok", delay: float = 0.0, retry_after: str = "0.2", reply=None):
        self.script = script
        self.reply = reply  # reply(key, prompt text) -> the text of an "ok" answer (default: names both)
        self.delay = delay
        self.retry_after = retry_after
        self.calls: list[dict] = []  # one per request: key, reply, time (start), end, in_flight (at its start)
        self.answered: list[str] = []  # keys whose "ok" reply was sent completely
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.batch_lock = threading.Lock()
        self.release = threading.Event()  # set to end every hanging request
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_polls_needed = 1  # retrieves answering in_progress before a batch completes
        self.batches_in_flight = 0  # created, not yet completed
        self.max_batches_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out as two writes: without this, Nagle's algorithm holds the body until the
            # client's delayed ACK (40 ms on Linux), which a real server (uvicorn) does not add to every answer
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/files"):
                    with server.batch_lock:
                        server.upload(self, raw)
                elif self.path.endswith("/batches"):
                    with server.batch_lock:
                        server.create_batch(self, json.loads(raw))
                else:
                    server.handle(self, json.loads(raw))

            def do_GET(self):
                with server.batch_lock:  # the Batch API's state, one request at a time
                    server.get(self)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def key_of(body: dict) -> str:
        content = body["messages"][0]["content"]
        text = next(c["text"] for c in content if c["type"] == "text")
        image = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
        return hashlib.sha256((text + image).encode()).hexdigest()[:16]

    @staticmethod
    def key_for(prompt: str, jpeg: bytes) -> str:
        """The key this server gives a request with this prompt and tile (as key_of reads it from the body)."""
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        return hashlib.sha256((prompt + url).encode()).hexdigest()[:16]

    def batch_inputs(self) -> list[list[dict]]:
        """The request lines of every batch submitted, in order of submission."""
        return [[json.loads(line) for line in self.files[b["input_file_id"]].decode().splitlines()]
                for b in self.batches.values()]

    def calls_per_key(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.calls:
            counts[c["key"]] = counts.get(c["key"], 0) + 1
        return counts

    def handle(self, handler, body: dict) -> None:
        key = self.key_of(body)
        with self.lock:
            n = len(self.calls)
            reply = self.script(n, key)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            call = {"key": key, "reply": reply, "time": time.time(), "auth": handler.headers.get("Authorization", ""),
                    "in_flight": self.in_flight, "end": None}
            self.calls.append(call)
        try:
            delay = self.delay(key) if callable(self.delay) else self.delay
            if delay:
                time.sleep(delay)
            if reply == "hang":
                self.release.wait(30)
                return
            if reply == "ok" or reply == "empty":
                prompt = body["messages"][0]["content"][0]["text"]
                text = "" if reply == "empty" else self.reply(key, prompt) if self.reply else f"answer {key} to: {prompt}"
                payload = {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129}}
                self._send(handler, 200, json.dumps(payload).encode())
                if reply == "ok":
                    with self.lock:
                        self.answered.append(key)
            elif reply == "malformed":
                self._send(handler, 200, b'{"id": "x", "choices": [ {"broken')
            elif reply == "429":
                self._send(handler, 429, b'{"error": {"message": "slow down", "type": "rate_limit"}}',
                           {"Retry-After": self.retry_after})
            elif reply == "500":
                self._send(handler, 500, b'{"error": {"message": "oops", "type": "server_error"}}')
            elif reply == "401":
                # a careless server echoing the key back: it must not reach our messages
                auth = handler.headers.get("Authorization", "")
                self._send(handler, 401, json.dumps({"error": {"message": f"Incorrect API key provided: {auth[7:]}",
                                                               "type": "invalid_request_error"}}).encode())
        finally:
            with self.lock:
                self.in_flight -= 1
                call["end"] = time.time()

    @staticmethod
    def _send(handler, status: int, data: bytes, headers: dict | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    # -- the Batch API: files, batches, results -------------------------------------------------
    def upload(self, handler, raw: bytes) -> None:
        from email.parser import BytesParser

        message = BytesParser().parsebytes(b"Content-Type: " + handler.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
        content = next(part.get_payload(decode=True) for part in message.get_payload() if part.get_filename())
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = content
        self._send(handler, 200, json.dumps({"id": file_id, "object": "file", "bytes": len(content), "created_at": 0,
                                             "filename": "requests.jsonl", "purpose": "batch",
                                             "status": "processed"}).encode())

    def _batch_json(self, batch: dict) -> bytes:
        return json.dumps({"object": "batch", "endpoint": "/v1/chat/completions", "completion_window": "24h",
                           "created_at": 0, **batch}).encode()

    def create_batch(self, handler, body: dict) -> None:
        if body["input_file_id"] not in self.files:
            error = {"error": {"message": f"No such File object: {body['input_file_id']}", "type": "invalid_request_error"}}
            return self._send(handler, 404, json.dumps(error).encode())
        batch_id = f"batch-{len(self.batches)}"
        lines = self.files[body["input_file_id"]].decode().splitlines()
        self.batches[batch_id] = {"id": batch_id, "input_file_id": body["input_file_id"], "status": "validating",
                                  "output_file_id": None, "polls": 0,
                                  "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        self.batches_in_flight += 1
        self.max_batches_in_flight = max(self.max_batches_in_flight, self.batches_in_flight)
        self._send(handler, 200, self._batch_json(self._public(batch_id)))

    def _public(self, batch_id: str) -> dict:
        return {k: v for k, v in self.batches[batch_id].items() if k != "polls"}

    def get(self, handler) -> None:
        parts = urllib.parse.urlsplit(handler.path).path.strip("/").split("/")
        if parts[-1] == "batches":  # the list, newest first, in one page
            listed = [self._public(b) for b in reversed(self.batches)]
            self._send(handler, 200, json.dumps({"object": "list", "data": [json.loads(self._batch_json(b)) for b in listed],
                                                 "has_more": False}).encode())
        elif parts[-2] == "batches":
            batch = self.batches[parts[-1]]
            batch["polls"] += 1
            if batch["polls"] > self.batch_polls_needed and batch["status"] != "completed":
                out_id = f"file-out-{parts[-1]}"
                results = []
                for line in self.files[batch["input_file_id"]].decode().splitlines():
                    request = json.loads(line)
                    key = self.key_of(request["body"])
                    self.answered.append(key)
                    results.append(json.dumps({"custom_id": request["custom_id"], "error": None, "response": {
                        "status_code": 200, "body": {"choices": [{"index": 0, "message": {
                            "role": "assistant", "content": f"batch answer {key}"}}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 5}}}}))
                self.files[out_id] = "\n".join(results).encode()
                batch.update(status="completed", output_file_id=out_id)
                self.batches_in_flight -= 1
                batch["request_counts"]["completed"] = len(results)
            elif batch["status"] != "completed":
                batch["status"] = "in_progress"
            self._send(handler, 200, self._batch_json(self._public(parts[-1])))
        elif parts[-1] == "content":
            self._send(handler, 200, self.files[parts[-2]], {"Content-Type": "application/octet-stream"})
