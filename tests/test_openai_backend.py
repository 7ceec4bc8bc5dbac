"""The openai backend against a local server of the tests' own: retries, limits, errors, secrets."""
import io
import socket
import time

import numpy as np
import pytest
from PIL import Image

from fake_openai import FakeOpenAI
from fourtier.captioning import AnswerCache, answer_key, run_captions
from fourtier.errors import DataError
from fourtier.vlm import PROMPT_IDS, Request, VLMError
from fourtier.vlm.openai_backend import OpenAIBackend

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


def test_batch_mode_answers_everything():
    with FakeOpenAI() as server:
        server.batch_polls_needed = 2
        b = backend(server, mode="batch", batch_poll_seconds=0.01)
        records = collect(b, requests_for(3))
    assert len(server.batches) == 1 and server.calls == []  # one batch, no per-request calls
    assert len(records) == 12 and all(r.ok and r.answer.startswith("batch answer") for r in records.values())
    assert all(r.input_tokens == 100 and r.output_tokens == 5 for r in records.values())


def test_batch_mode_resumes_a_submitted_batch_instead_of_paying_again():
    import asyncio

    reqs = requests_for(2)
    with FakeOpenAI() as server:
        server.batch_polls_needed = 10 ** 6  # never finishes while the first run waits
        b = backend(server, mode="batch", batch_poll_seconds=0.01)
        with pytest.raises(asyncio.TimeoutError):  # the run is cut off while polling, like a kill
            asyncio.run(asyncio.wait_for(b._run_batch(reqs, lambda r, rec: None), 0.5))
        server.batch_polls_needed = 0
        records = collect(backend(server, mode="batch", batch_poll_seconds=0.01), reqs)
    assert len(server.batches) == 1  # the second run polled the same batch
    assert len(records) == 8 and all(r.ok for r in records.values())
    assert sorted(server.answered) == sorted(set(server.answered))
