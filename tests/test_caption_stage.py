"""The caption stage as a user runs it: killed half-way, re-run (sync and Batch API); outputs and logs free of
secrets; the streamed run writes the bytes a chunk-by-chunk run writes."""
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from fake_openai import FakeOpenAI
from fourtier.video.tiling import INDEX_COLUMNS
from helpers import REPO

SECRET = "sk-proj-" + "Zq7" * 16
N_VIDEOS = 6


def make_project(root: Path, base_url: str, **preset) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["vlms"]["local"] = {"type": "openai", "model": "tiny", "base_url": base_url, "concurrency": 2,
                               "retry_base_delay": 0.01, "retry_max_delay": 0.2, "timeout": 60,
                               "price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0, **preset}
    params["vlm"] = "local"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tiles = root / "data/tiles/synth-pretrain"
    (tiles / "items").mkdir(parents=True)
    with open(tiles / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        for i in range(N_VIDEOS):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
            (tiles / "items" / f"v{i}.jpg").write_bytes(buf.getvalue())
            writer.writerow({"video_id": f"v{i}", "status": "ok", "location": f"items/v{i}.jpg"})
    return root


def stage(root: Path, *args, **popen):
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "FOURTIER_CACHE": str(root / "cache")}
    return subprocess.Popen([sys.executable, str(REPO / "stages/caption.py"), "synth-pretrain", *args], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_killed_run_resumes_without_asking_any_answer_twice(tmp_path):
    total = N_VIDEOS * 4
    mode = {"hang_after": 8}
    script = lambda n, key: "hang" if n >= mode["hang_after"] else "ok"  # noqa: E731
    with FakeOpenAI(script) as server:
        root = make_project(tmp_path, server.base_url)
        proc = stage(root)
        deadline = time.time() + 60
        while len(server.calls) < 10 and time.time() < deadline:  # 8 answered, 2 hanging in flight
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(server.answered) == 8
        mode["hang_after"] = 10 ** 9
        server.release.set()
        second = stage(root)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
    # every paid answer was asked exactly once; only the two requests left hanging were sent again
    assert sorted(server.answered) == sorted(set(server.answered)) and len(server.answered) == total
    assert len(server.calls) == total + 2
    assert "8 from cache, 16 asked now" in out
    rows = [json.loads(line) for line in (root / "data/captions/synth-pretrain/captions.jsonl").read_text().splitlines()]
    assert len(rows) == total and all(r["answer"].startswith("answer ") and r["model"] == "tiny" for r in rows)
    metrics = json.loads((root / "data/captions/synth-pretrain/metrics.json").read_text())
    assert metrics["input_tokens"] == 120 * total and metrics["estimated_cost_usd"] > 0
    # the key is sent to the server and nowhere else
    assert all(c["auth"] == f"Bearer {SECRET}" for c in server.calls)
    everything = out + err + "".join(p.read_text(errors="replace") for p in (root / "data").rglob("*.json*"))
    everything += (root / "params.yaml").read_text()
    assert SECRET not in everything and "Zq7Zq7" not in everything


def test_dry_run_spends_nothing(tmp_path):
    with FakeOpenAI() as server:
        root = make_project(tmp_path, server.base_url)
        out, err = stage(root, "--dry-run").communicate(timeout=60)
    assert server.calls == []
    assert f"{N_VIDEOS * 4} answers needed, 0 cached, {N_VIDEOS * 4} calls to make" in out, err
    assert "estimated:" in out and "$" in out


def test_dry_run_counts_what_the_run_would_ask_again(tmp_path):
    """A cached failure or empty answer is asked again by the run, so the dry run counts it as a call."""
    import sqlite3

    with FakeOpenAI() as server:
        root = make_project(tmp_path, server.base_url)
        first = stage(root)
        assert first.communicate(timeout=120) and first.returncode == 0
        db = sqlite3.connect(root / "cache" / "answers.sqlite")
        keys = [k for (k,) in db.execute("SELECT key FROM answers ORDER BY key LIMIT 2")]
        for key, record in zip(keys, ({"answer": "", "error": ""}, {"answer": "", "error": "HTTP 500"})):
            db.execute("UPDATE answers SET record = ? WHERE key = ?", (json.dumps(record), key))
        db.commit()
        db.close()
        out, err = stage(root, "--dry-run").communicate(timeout=60)
    total = N_VIDEOS * 4
    assert f"{total} answers needed, {total - 2} cached, 2 calls to make" in out, err


def test_unknown_vlm_is_a_clear_error(tmp_path):
    root = make_project(tmp_path, "http://127.0.0.1:9/v1")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["vlm"] = "gpt-7"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage(root)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "'vlm' is 'gpt-7', which is not one of" in err and "Traceback" not in err


def test_the_same_answers_give_the_same_captions_file_on_another_machine(tmp_path):
    """A fresh answer cache (another machine) asks everything again, with other latencies and retries: the
    captions file, which embed and everything after it depend on, and the stage's metrics keep their bytes; the
    latency and the retries go to data/timings, which no stage depends on and dvc.lock does not record."""
    with FakeOpenAI(lambda n, key: "500" if n < 4 else "ok") as server:  # machine 1: retries, no delay
        root = make_project(tmp_path, server.base_url)
        captions = root / "data/captions/synth-pretrain/captions.jsonl"
        assert stage(root).wait(timeout=120) == 0
        first = captions.read_bytes()
        metrics = root / "data/captions/synth-pretrain/metrics.json"
        first_metrics = metrics.read_bytes()
        timings = root / "data/timings/caption-synth-pretrain.json"
        first_timings = json.loads(timings.read_text())
        os.rename(root / "cache", root / "cache-machine-1")  # machine 2 starts without the answers
        server.script, server.delay = (lambda n, key: "ok"), 0.05  # no retries, slower answers
        assert stage(root).wait(timeout=120) == 0
    assert len(server.answered) == 2 * N_VIDEOS * 4  # every answer was asked twice
    assert captions.read_bytes() == first
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert not any("latency_s" in r or "attempts" in r for r in rows)
    assert metrics.read_bytes() == first_metrics
    second_timings = json.loads(timings.read_text())
    assert first_timings["mean_attempts"] > 1 and second_timings["mean_attempts"] == 1  # the timings live here
    assert second_timings["mean_latency_s"] > first_timings["mean_latency_s"]


def test_a_killed_batch_run_resumes_its_batches_without_submitting_them_again(tmp_path):
    """Killed (SIGKILL) while its first two batches wait at the server: the re-run collects those two from the
    state files and submits only the third."""
    with FakeOpenAI() as server:
        server.batch_polls_needed = 10 ** 6  # nothing completes while the first run lives
        root = make_project(tmp_path, server.base_url, mode="batch", batch_max_requests=8, batch_concurrency=2,
                            batch_poll_seconds=0.05)
        proc = stage(root)
        deadline = time.time() + 60
        while len(server.batches) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a third batch would have to wait for a slot
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(server.batches) == 2 and len(list((root / "cache/batches").glob("*.json"))) == 2
        server.batch_polls_needed = 0
        second = stage(root)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
    assert len(server.batches) == 3 and out.count("collecting batch") == 2
    ids = [line["custom_id"] for lines in server.batch_inputs() for line in lines]
    assert len(ids) == len(set(ids)) == N_VIDEOS * 4  # every request in exactly one batch: none paid twice
    rows = [json.loads(line) for line in (root / "data/captions/synth-pretrain/captions.jsonl").read_text().splitlines()]
    assert len(rows) == N_VIDEOS * 4 and all(r["answer"].startswith("batch answer") for r in rows)
    assert "base_url" not in rows[0]["settings"]
    assert list((root / "cache/batches").glob("*.json")) == []


def test_the_streamed_run_writes_the_bytes_of_a_chunk_by_chunk_run(tmp_path):
    """The stage streams every chunk through the backend, then writes captions.jsonl from the cache: the same bytes
    as asking and writing one chunk at a time (the stage before streaming), here with the builtin describer."""
    from fourtier.caption.backend import make_backend
    from fourtier.caption.runner import AnswerCache, build_requests, caption_chunks, run_captions, write_captions

    root = make_project(tmp_path, "http://127.0.0.1:9/v1")
    prompts = yaml.safe_load((REPO / "params.yaml").read_text())["caption"]["prompts"]
    backend = make_backend("builtin", {"builtin": {"type": "builtin"}}, {"max_new_tokens": 8, "temperature": 0.0})
    settings = {**backend.settings, "K": 5}

    def chunks():  # 3 chunks of 2 tiles
        return build_requests(root / "data/tiles/synth-pretrain", 5, prompts, backend.model_id, settings, chunk=2)

    old = AnswerCache(tmp_path / "old.sqlite")
    for n, requests in enumerate(chunks()):
        run_captions(backend, requests, old, 0.0)
        write_captions(tmp_path / "old", requests, old, "builtin", backend.model_id, settings, append=n > 0)
    new = AnswerCache(tmp_path / "new.sqlite")
    stats = caption_chunks(backend, chunks(), new, 0.0)
    for n, requests in enumerate(chunks()):
        write_captions(tmp_path / "new", requests, new, "builtin", backend.model_id, settings, append=n > 0)
    assert stats["requests"] == stats["called"] == N_VIDEOS * 4
    written = (tmp_path / "new/captions.jsonl").read_bytes()
    assert written == (tmp_path / "old/captions.jsonl").read_bytes()
    rows = [json.loads(line) for line in written.decode().splitlines()]
    assert [r["video_id"] for r in rows] == [f"v{i}" for i in range(N_VIDEOS) for _ in range(4)]
    assert all(r["answer"] for r in rows)


def _open_cache(path: str) -> int:
    from fourtier.caption.runner import AnswerCache

    AnswerCache(Path(path)).close()
    return 0


def test_many_processes_open_a_new_answer_cache_at_once(tmp_path):
    # Ranks and parallel experiments open the same new cache together; SQLite answers one of them "database is
    # locked" at once (no busy wait) while another switches it to WAL. Unretried, about 1 round in 70 failed.
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6) as pool:
        for round_ in range(60):
            path = str(tmp_path / f"answers-{round_}.sqlite")
            assert pool.map(_open_cache, [path] * 6) == [0] * 6
