"""Without network: a model that is not cached, or a server that is not there, fails in seconds with what to do.

"Unreachable" is made deterministic on loopback: a closed port (connection refused), and a listener whose
backlog is full and which never accepts, so that a new connection hangs in the handshake as it does to a
blackholed address. The hub endpoint is pointed at one of those (never at the real hub).
"""
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fourtier.caption.backend import VLMError, make_backend
from fourtier.caption.openai_backend import OpenAIBackend
from fourtier.models.backbone import BackboneError, obtain_hub_backbone
from fourtier.text.encoder import TextEncoderError, make_encoder
from test_openai_backend import requests_for

GEN = {"max_new_tokens": 6, "temperature": 0.0}
LIMIT = 20.0  # seconds: the bound for every failure here
FIX = ("hf download some-org/not-cached", "huggingface-cli download some-org/not-cached")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def blackhole():
    """A loopback port where a new connection never completes: listen(0), queue filled, never accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.2)
        probe = socket.socket()
        probe.settimeout(1.0)
        try:
            probe.connect(("127.0.0.1", port))
            pytest.skip("this kernel completes connections to a full listen queue: no blackhole on loopback")
        except (socket.timeout, TimeoutError):
            pass
        finally:
            probe.close()
        yield port
    finally:
        for c in fillers:
            c.close()
        listener.close()


def point_hub_at(monkeypatch, url: str) -> None:
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)


@pytest.fixture
def hub_refused(monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    point_hub_at(monkeypatch, url)
    return url


def fails(error, fn):
    start = time.perf_counter()
    with pytest.raises(error) as err:
        fn()
    return str(err.value), time.perf_counter() - start


def assert_unreachable_message(message: str, label: str, url: str, fallback: str) -> None:
    assert f"cannot load {label}" in message, message
    assert "not in the local Hugging Face cache" in message
    assert f"hub ({url}) is unreachable" in message
    assert all(fix in message for fix in FIX) and "save_pretrained" in message
    assert f"{fallback}, which works offline" in message


# -- the hub: text encoder, hf VLM, backbone -----------------------------------------------------

def test_text_encoder_fails_fast_when_the_hub_is_unreachable(hub_refused):
    message, seconds = fails(TextEncoderError, lambda: make_encoder("hf:some-org/not-cached", {}))
    assert_unreachable_message(message, "text encoder 'some-org/not-cached'", hub_refused, "text_encoder=minilm")
    assert seconds < LIMIT
    print(f"text encoder, hub refused: {seconds:.1f} s")


def test_clip_text_encoder_fails_fast_when_the_hub_is_unreachable(hub_refused):
    presets = {"clip": {"type": "clip", "model": "some-org/not-cached"}}
    message, seconds = fails(TextEncoderError, lambda: make_encoder("clip", presets))
    assert_unreachable_message(message, "CLIP text encoder 'some-org/not-cached'", hub_refused, "text_encoder=minilm")
    assert seconds < LIMIT


def test_hf_vlm_fails_fast_when_the_hub_is_unreachable(hub_refused):
    backend = make_backend("blip2", {"blip2": {"type": "hf", "model": "some-org/not-cached"}}, GEN)
    message, seconds = fails(VLMError, lambda: backend.run(requests_for(1), lambda r, rec: None))
    assert message.startswith("vlm 'blip2': ")
    assert_unreachable_message(message, "'some-org/not-cached'", hub_refused, "vlm=builtin")
    assert seconds < LIMIT
    print(f"hf vlm, hub refused: {seconds:.1f} s")


def test_backbone_fails_fast_when_the_hub_is_unreachable(hub_refused, tmp_path):
    message, seconds = fails(BackboneError, lambda: obtain_hub_backbone("some-org/not-cached", tmp_path))
    assert_unreachable_message(message, "backbone 'some-org/not-cached'", hub_refused, "backbone=tiny")
    assert seconds < LIMIT and list(tmp_path.iterdir()) == []


def test_a_hub_that_never_answers_fails_within_the_bound(monkeypatch):
    with blackhole() as port:
        url = f"http://127.0.0.1:{port}"
        point_hub_at(monkeypatch, url)
        message, seconds = fails(TextEncoderError, lambda: make_encoder("hf:some-org/not-cached", {}))
    assert_unreachable_message(message, "text encoder 'some-org/not-cached'", url, "text_encoder=minilm")
    assert seconds < LIMIT
    print(f"text encoder, hub blackholed: {seconds:.1f} s")


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "preset"])
def test_offline_mode_never_tries_the_hub(how, monkeypatch, tmp_path):
    import fourtier.runtime.hub

    def no_probe(*args, **kwargs):
        raise AssertionError("the hub was tried in offline mode")

    point_hub_at(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(fourtier.runtime.hub, "hub_unreachable", no_probe)
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        calls = [(TextEncoderError, lambda: make_encoder("hf:some-org/not-cached", {}), "HF_HUB_OFFLINE=1"),
                 (BackboneError, lambda: obtain_hub_backbone("some-org/not-cached", tmp_path), "HF_HUB_OFFLINE=1")]
    else:
        calls = [(BackboneError, lambda: obtain_hub_backbone("some-org/not-cached", tmp_path, offline=True),
                  "offline: true in its preset")]
    backend = make_backend("v", {"v": {"type": "hf", "model": "some-org/not-cached", "offline": how == "preset"}}, GEN)
    calls.append((VLMError, lambda: backend.run(requests_for(1), lambda r, rec: None),
                  "HF_HUB_OFFLINE=1" if how == "HF_HUB_OFFLINE" else "offline: true in its preset"))
    for error, call, reason in calls:
        message, seconds = fails(error, call)
        assert "cannot load" in message and "'some-org/not-cached'" in message
        assert f"not in the local Hugging Face cache, and the hub is not tried ({reason})" in message, message
        assert all(fix in message for fix in FIX)
        assert seconds < 5.0


def run_python(code: str, env: dict) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")} | env
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent)
    return proc.stdout + proc.stderr, time.perf_counter() - start


ENCODE = ("from fourtier.text.encoder import TextEncoderError, make_encoder\n"
          "try:\n    make_encoder('hf:some-org/not-cached', {})\n"
          "except TextEncoderError as exc:\n    print('error:', exc)\n")


@pytest.mark.parametrize("how", ["HF_ENDPOINT", "HF_HUB_OFFLINE"])
def test_a_fresh_process_fails_fast_too(how):
    """The environment variables as a user sets them, read when huggingface_hub is imported; the clock
    includes starting Python and importing torch and transformers."""
    url = f"http://127.0.0.1:{closed_port()}"
    env = {"HF_ENDPOINT": url} | ({"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE" else {})
    out, seconds = run_python(ENCODE, env)
    assert "error: cannot load text encoder 'some-org/not-cached'" in out, out
    assert "Traceback" not in out and "Retrying in" not in out
    if how == "HF_ENDPOINT":
        assert f"hub ({url}) is unreachable" in out
    else:
        assert "the hub is not tried (HF_HUB_OFFLINE=1)" in out
    assert seconds < LIMIT
    print(f"fresh process, {how}: {seconds:.1f} s")


def test_a_broken_local_folder_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    message, _ = fails(TextEncoderError, lambda: make_encoder(str(tmp_path), {}))
    assert f"cannot load text encoder '{tmp_path}' from that folder" in message and "save_pretrained" in message
    message, _ = fails(TextEncoderError, lambda: make_encoder(f"hf:{tmp_path}/missing", {}))
    assert "there is no such folder" in message


# -- the openai backend ----------------------------------------------------------------------------

def default_backend(port: int) -> OpenAIBackend:
    """The preset's defaults: 6 retries from a 1 s backoff, a 60 s timeout, concurrency 8."""
    return OpenAIBackend("local", {"model": "m", "base_url": f"http://127.0.0.1:{port}/v1"}, GEN)


def assert_server_unreachable(message: str, port: int) -> None:
    assert f"cannot reach the server at http://127.0.0.1:{port}/v1: it is unreachable" in message, message
    assert "it never answered" in message and "base_url" in message


def assert_caption_run_fails_fast(port: int, error: str, concurrency: int = 8) -> float:
    """A caption run against the server at `port` stops within LIMIT, saying it is unreachable and why."""
    backend = default_backend(port)
    backend.concurrency = concurrency
    message, seconds = fails(VLMError, lambda: backend.run(requests_for(3), lambda r, rec: None))
    assert_server_unreachable(message, port)
    assert error in message
    assert seconds < LIMIT
    return seconds


@pytest.mark.parametrize("concurrency", [8, 1])
def test_openai_backend_fails_fast_on_a_closed_port(concurrency):
    seconds = assert_caption_run_fails_fast(closed_port(), "ConnectError", concurrency)
    print(f"openai, closed port, concurrency {concurrency}: {seconds:.1f} s")


def test_openai_backend_fails_fast_on_a_blackholed_address():
    with blackhole() as port:
        seconds = assert_caption_run_fails_fast(port, "ConnectTimeout")
    print(f"openai, blackholed: {seconds:.1f} s")


def test_a_server_that_answered_is_retried_when_its_connection_fails():
    """Not unreachable once it has answered in this run (a restart): the usual retries, then a failed record."""
    import asyncio

    port = closed_port()
    backend = OpenAIBackend("local", {"model": "m", "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 4,
                                      "retry_base_delay": 0.01, "retry_max_delay": 0.05}, GEN)

    async def ask():
        client = backend._client()
        try:
            return await backend._ask(client, requests_for(1)[0])
        finally:
            await client.close()

    backend._answered = True
    record, unreachable = asyncio.run(ask())
    assert not unreachable and not record.ok and record.attempts == 5 and "ConnectError" in record.error
