"""The openai backend against a local server of the tests' own: retries, limits, errors, secrets; concurrency
held across chunk boundaries; Batch API batches cut by count and size, run side by side, resumed after a kill."""
import asyncio
import io
import json
import socket
import time

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI
from fourtier.caption.backend import Request, VLMError
from fourtier.caption.openai_backend import OpenAIBackend
from fourtier.caption.runner import AnswerCache, answer_key, caption_chunks, run_captions
from fourtier.config.base import PROMPT_IDS
from fourtier.errors import DataError

GEN = {"max_new_tokens": 32, "temperature": 0.0}
FAST = {"retry_base_delay": 0.01, "retry_max_delay": 0.5, "timeout": 2, "max_retries": 4}


def requests_for(n_videos: int) -> list[Request]:
    out = []
    for v in range(n_videos):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(v).integers(0, 255, (16, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
        for pid in PROMPT_IDS:
            out.append(Request(f"v{v}", pid, f"prompt {pid}", buf.getvalue(), 3,
                               answer_key(buf.getvalue(), f"prompt {pid}", "m", {})))
    return out


def backend(server, **preset):
    return OpenAIBackend("test", {"model": "m", "base_url": server.base_url, **FAST, **preset}, GEN)


def collect(b, requests):
    records = {}
    b.run(requests, lambda r, rec: records.__setitem__(r.key, rec))
    return records


def test_answers_tokens_and_concurrency_bound():
    with FakeOpenAI(delay=0.05) as server:
        records = collect(backend(server, concurrency=3), requests_for(6))
    assert len(records) == 24 and all(r.ok and r.attempts == 1 for r in records.values())
    assert all(r.input_tokens == 120 and r.output_tokens == 9 for r in records.values())
    assert server.max_in_flight == 3
    assert sorted(server.calls_per_key().values()) == [1] * 24


@pytest.mark.parametrize("fault", ["429", "500", "malformed", "empty", "hang"])
def test_transient_faults_are_retried(fault):
    # the first two calls of every request fail, the third succeeds
    seen = {}

    def script(n, key):
        seen[key] = seen.get(key, 0) + 1
        return fault if seen[key] <= 2 else "ok"

    with FakeOpenAI(script) as server:
        start = time.perf_counter()
        records = collect(backend(server, concurrency=4, timeout=0.5), requests_for(2))
        elapsed = time.perf_counter() - start
    assert all(r.ok and r.attempts == 3 for r in records.values()), records
    assert set(server.calls_per_key().values()) == {3}
    if fault == "429":  # Retry-After 0.2 s was honoured twice, not the 0.01 s backoff
        assert elapsed >= 0.4


def test_retries_give_up_and_the_stage_stops_with_a_summary(tmp_path):
    with FakeOpenAI(lambda n, key: "500") as server:
        b = backend(server, max_retries=2)
        with pytest.raises(DataError, match=r"8 of 8 caption requests failed.*HTTP 500"):
            run_captions(b, requests_for(2), AnswerCache(tmp_path / "c.sqlite"), max_failures=0.0)
    assert len(server.calls) == 8 * 3  # first try plus two retries each, nothing more


def test_auth_error_is_not_retried_and_never_shows_the_key(monkeypatch):
    secret = "sk-test-" + "x9" * 20
    monkeypatch.setenv("FOURTIER_TEST_KEY", secret)
    with FakeOpenAI(lambda n, key: "401") as server:
        b = backend(server, api_key_env="FOURTIER_TEST_KEY", concurrency=1)
        with pytest.raises(VLMError) as err:
            collect(b, requests_for(1))
    assert "refused the credentials" in str(err.value) and "FOURTIER_TEST_KEY" in str(err.value)
    assert secret not in str(err.value) and "x9x9x9" not in str(err.value)
    assert len(server.calls) == 1 and server.calls[0]["auth"] == f"Bearer {secret}"


def test_missing_key_without_local_server_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(VLMError, match=r"no API key.*export OPENAI_API_KEY=.*never in params.yaml"):
        OpenAIBackend("gpt-4o", {"model": "gpt-4o"}, GEN)


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend("local", {"model": "m", "base_url": f"http://127.0.0.1:{port}/v1", **FAST, "max_retries": 1}, GEN)
    with pytest.raises(VLMError, match=r"cannot reach the server at http://127.0.0.1:\d+/v1"):
        collect(b, requests_for(3))


def test_cached_answers_are_never_asked_again(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")
    reqs = requests_for(3)
    with FakeOpenAI() as server:
        first = run_captions(backend(server), reqs[:6], cache, 0.0)
        second = run_captions(backend(server), reqs, cache, 0.0)
        third = run_captions(backend(server), reqs, cache, 0.0)
    assert (first["called"], second["called"], third["called"]) == (6, 6, 0)
    assert sorted(server.calls_per_key().values()) == [1] * 12


def test_dry_run_estimate_and_cost():
    b = OpenAIBackend("gpt", {"model": "gpt-4o", "base_url": "http://127.0.0.1:9/v1", "price_input_per_mtok": 2.5,
                              "price_output_per_mtok": 10.0}, GEN)
    est = b.estimate(requests_for(2))
    assert est["output_tokens"] == 8 * 32 and est["input_tokens"] >= 8 * 85
    assert est["cost_usd"] == pytest.approx(est["input_tokens"] * 2.5e-6 + est["output_tokens"] * 1e-5)


def test_batch_mode_answers_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURTIER_CACHE", str(tmp_path))
    with FakeOpenAI() as server:
        server.batch_polls_needed = 2
        b = backend(server, mode="batch", batch_poll_seconds=0.01)
        records = collect(b, requests_for(3))
    assert len(server.batches) == 1 and server.calls == []  # one batch, no per-request calls
    assert len(records) == 12 and all(r.ok and r.answer.startswith("batch answer") for r in records.values())
    assert all(r.input_tokens == 100 and r.output_tokens == 5 for r in records.values())




def chunked(requests: list[Request], size: int) -> list[list[Request]]:
    return [requests[i:i + size] for i in range(0, len(requests), size)]


def test_concurrency_is_held_across_chunk_boundaries(tmp_path):
    """The last request of chunk 0 is slow: the other workers go on into chunks 1 and 2 meanwhile, with
    `concurrency` requests in flight at the server (chunk by chunk, they would wait for it, idle)."""
    reqs = requests_for(6)  # 24 requests, 3 chunks of 8
    slow = FakeOpenAI.key_for(reqs[7].prompt, reqs[7].tile_jpeg)
    later = {FakeOpenAI.key_for(r.prompt, r.tile_jpeg) for r in reqs[8:]}
    with FakeOpenAI(delay=lambda key: 1.0 if key == slow else 0.05) as server:
        cache = AnswerCache(tmp_path / "c.sqlite")
        stats = caption_chunks(backend(server, concurrency=4), chunked(reqs, 8), cache, 0.0)
    assert stats["called"] == 24 and stats["requests"] == 24 and sorted(server.calls_per_key().values()) == [1] * 24
    slow_call = next(c for c in server.calls if c["key"] == slow)
    during = [c for c in server.calls if slow_call["time"] < c["time"] < slow_call["end"]]
    assert sum(c["key"] in later for c in during) >= 12  # the next chunks went on while chunk 0's tail ran
    assert max(c["in_flight"] for c in during) == 4 == server.max_in_flight


def test_failures_past_the_limit_stop_new_requests_and_in_flight_answers_are_kept(tmp_path):
    reqs = requests_for(10)  # 40 requests, 5 chunks of 8
    bad = FakeOpenAI.key_for(reqs[1].prompt, reqs[1].tile_jpeg)
    cache = AnswerCache(tmp_path / "c.sqlite")
    with FakeOpenAI(lambda n, key: "500" if key == bad else "ok", delay=0.05) as server:
        with pytest.raises(DataError, match=r"1 of \d+ caption requests failed.*HTTP 500"):
            caption_chunks(backend(server, concurrency=3, max_retries=1), chunked(reqs, 8), cache, 0.0)
        time.sleep(0.1)  # the server notes an answer just after sending it
        answered = list(server.answered)
        calls = len(server.calls)
    assert calls < 20  # it stopped sending: 2 tries of the bad one and what ran beside them
    cached = cache.get_many([r.key for r in reqs])
    assert len(cached) == len(answered) >= 2  # every answer paid for, including those in flight at the stop, is kept


def test_the_cache_key_does_not_hold_the_server_address(tmp_path):
    """A vLLM server moved to another host keeps its answers: the second server is asked nothing."""
    cache = AnswerCache(tmp_path / "c.sqlite")
    with FakeOpenAI() as first, FakeOpenAI() as second:
        a, b = backend(first), backend(second)
        assert a.settings == b.settings == {"max_tokens": 32, "temperature": 0.0, "detail": "low"}
        reqs = [Request(r.video_id, r.prompt_id, r.prompt, r.tile_jpeg, r.K,
                        answer_key(r.tile_jpeg, r.prompt, a.model_id, a.settings)) for r in requests_for(2)]
        assert run_captions(a, reqs, cache, 0.0)["called"] == 8
        assert run_captions(b, reqs, cache, 0.0)["called"] == 0
        assert len(first.calls) == 8 and second.calls == []


def submitted_ids(server) -> list[str]:
    return [line["custom_id"] for lines in server.batch_inputs() for line in lines]


def test_batches_are_cut_by_count_and_by_size_and_run_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURTIER_CACHE", str(tmp_path))
    reqs = requests_for(6)  # 24 requests
    with FakeOpenAI() as server:
        server.batch_polls_needed = 10
        records = collect(backend(server, mode="batch", batch_poll_seconds=0.01, batch_max_requests=5,
                                  batch_concurrency=2), iter(reqs))
        assert [len(lines) for lines in server.batch_inputs()] == [5, 5, 5, 5, 4]
        assert server.max_batches_in_flight == 2  # two at a time, never more
    assert len(records) == 24 and all(r.ok for r in records.values())
    assert sorted(submitted_ids(server)) == sorted(r.key for r in reqs)
    lines = [len(backend(server, mode="batch")._batch_line(r)) for r in reqs]
    assert 4 * min(lines) > 3.5 * max(lines)
    with FakeOpenAI() as server:  # the same by file size: three lines fit, a fourth would not
        b = backend(server, mode="batch", batch_poll_seconds=0.01, batch_max_mb=3.5 * max(lines) / 1e6)
        records = collect(b, iter(reqs))
        sizes = [len(server.files[batch["input_file_id"]]) for batch in server.batches.values()]
    assert len(sizes) == 8 and max(sizes) <= b.batch_max_bytes and len(records) == 24
    assert list((tmp_path / "batches").iterdir()) == []  # every batch collected, no state left


def test_a_killed_batch_run_is_collected_by_the_next_run_without_submitting_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURTIER_CACHE", str(tmp_path))
    reqs = requests_for(3)  # 12 requests: batches of 4, two out at a time
    preset = {"mode": "batch", "batch_poll_seconds": 0.01, "batch_max_requests": 4, "batch_concurrency": 2}
    with FakeOpenAI() as server:
        server.batch_polls_needed = 10 ** 6  # never done while the first run waits
        first = backend(server, **preset)
        with pytest.raises(asyncio.TimeoutError):  # the run is cut off while it waits, like a kill
            asyncio.run(asyncio.wait_for(first._run_batch(iter(reqs), lambda r, rec: None), 1.0))
        states = [json.loads(p.read_text()) for p in sorted((tmp_path / "batches").glob("*.json"))]
        assert len(server.batches) == len(states) == 2  # the third waited for a free slot
        assert [[e[0] for e in s["requests"]] for s in states] == [[r.key for r in reqs[:4]],
                                                                   [r.key for r in reqs[4:8]]]
        assert all(s["model"] == "m" and s["server"] == server.base_url for s in states)
        server.batch_polls_needed = 0
        cache = AnswerCache(tmp_path / "answers.sqlite")
        stats = run_captions(backend(server, **preset), reqs, cache, 0.0)
    assert len(server.batches) == 3  # the two pending batches collected; only the rest submitted
    assert sorted(submitted_ids(server)) == sorted(r.key for r in reqs)  # no request in two batches
    assert stats["called"] == 12 and stats["failed"] == 0
    assert all(rec["answer"].startswith("batch answer") for rec in cache.get_many([r.key for r in reqs]).values())
    assert len(cache.get_many([r.key for r in reqs])) == 12
    assert list((tmp_path / "batches").glob("*.json")) == []


class Killed(Exception):
    pass


@pytest.mark.parametrize("created", [True, False], ids=["after-create", "before-create"])
def test_a_run_killed_around_batch_creation_loses_no_batch(tmp_path, monkeypatch, created):
    """Killed after the server created a batch and before its id was saved (or after the upload, before the
    create): the next run adopts that batch (or creates it from the file already uploaded). One batch, one
    upload, every request answered once."""
    monkeypatch.setenv("FOURTIER_CACHE", str(tmp_path))
    reqs = requests_for(2)  # 8 requests, one batch
    preset = {"mode": "batch", "batch_poll_seconds": 0.01}
    with FakeOpenAI() as server:
        first = backend(server, **preset)

        async def killed_at_create(client, path, state):
            if created:
                await client.batches.create(input_file_id=state["input_file_id"], endpoint="/v1/chat/completions",
                                            completion_window="24h")
            raise Killed

        first._create = killed_at_create
        with pytest.raises(Killed):
            asyncio.run(first._run_batch(iter(reqs), lambda r, rec: None))
        (state_file,) = (tmp_path / "batches").glob("*.json")
        assert json.loads(state_file.read_text())["batch_id"] is None
        assert len(server.batches) == int(created)
        cache = AnswerCache(tmp_path / "answers.sqlite")
        stats = run_captions(backend(server, **preset), reqs, cache, 0.0)
        uploads = [f for f in server.files if not f.startswith("file-out")]
    assert len(server.batches) == 1 and len(uploads) == 1  # nothing submitted or uploaded twice
    assert sorted(submitted_ids(server)) == sorted(r.key for r in reqs)
    assert stats["called"] == 8 and stats["failed"] == 0
    assert list((tmp_path / "batches").glob("*.json")) == []


def test_a_state_file_whose_upload_is_gone_has_its_requests_asked_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURTIER_CACHE", str(tmp_path))
    reqs = requests_for(1)
    with FakeOpenAI() as server:
        state = {"batch_id": None, "model": "m", "server": server.base_url, "input_file_id": "file-gone",
                 "requests": [[r.key, r.video_id, r.prompt_id] for r in reqs]}
        (tmp_path / "batches").mkdir()
        (tmp_path / "batches" / "file-gone.json").write_text(json.dumps(state))
        cache = AnswerCache(tmp_path / "answers.sqlite")
        stats = run_captions(backend(server, mode="batch", batch_poll_seconds=0.01), reqs, cache, 0.0)
    assert stats["called"] == 4 and len(server.batches) == 1
    assert list((tmp_path / "batches").glob("*.json")) == []


@pytest.mark.parametrize("key, value", [("batch_concurrency", 0), ("batch_max_mb", -1), ("batch_max_requests", 2.5)])
def test_batch_limits_must_be_positive(key, value):
    with pytest.raises(VLMError, match=rf"vlms.test.{key} is {value!r}; use"):
        OpenAIBackend("test", {"model": "m", "base_url": "http://127.0.0.1:9/v1", key: value}, GEN)
