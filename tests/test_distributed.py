"""align and finetune under torchrun: 2 CPU processes (gloo) against one process."""
import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def run(out: Path, nproc: int, *mode: str) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    done = subprocess.run([*launcher, str(WORKER), str(out), *mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False) if out.exists() else None


def assert_same_training(a: dict, b: dict) -> None:
    """The trained models compute the same function and the losses agree. (Single weights may still differ: a
    bias that only shifts softmax scores has a zero true gradient, and Adam turns its rounding noise into
    lr-sized steps.)"""
    for key, value in a["outputs"].items():
        assert torch.allclose(b["outputs"][key], value, atol=1e-4), key
    assert b["retrieval"] == a["retrieval"]
    assert len(b["history"]) == len(a["history"]) == 3
    for x, y in zip(a["history"], b["history"]):
        assert abs(x["loss"] - y["loss"]) < 1e-5


def test_two_processes_train_like_one(tmp_path):
    single = run(tmp_path / "single.pt", 1)
    ddp = run(tmp_path / "ddp.pt", 2)
    assert single["world"] == 1 and ddp["world"] == 2
    # one batch: the gradients summed over 2 shards are the single-process gradients
    assert single["gradients"].keys() == ddp["gradients"].keys()
    assert any(k.startswith("align.processors.") for k in single["gradients"])
    assert any(k.startswith("classify.integration.") for k in single["gradients"])
    for key, value in single["gradients"].items():
        assert torch.allclose(ddp["gradients"][key], value, atol=1e-6, rtol=1e-4), key
    # with mixup and dropout on: their draws are of the global batch, so 2 ranks train the experiment of 1
    assert_same_training(single, ddp)
    # the weights did move: the comparison is not between two untouched models
    torch.manual_seed(0)
    from ddp_worker import FTP, FTPConfig, D, H, T, W
    untouched = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=3, text_dim=6)).state_dict()
    assert not torch.allclose(untouched["classifier.head.weight"], single["state"]["classifier.head.weight"])
    assert not torch.allclose(untouched["processors.A.proj_s.net.1.weight"], single["state"]["processors.A.proj_s.net.1.weight"])


def test_a_resume_on_another_world_size_continues_the_same_run(tmp_path):
    """Both stages checkpoint every epoch. 2 ranks crash after epoch 2 of stage 1; one process resumes it,
    finishes it and crashes after epoch 2 of stage 2; 2 ranks resume that. The result is the uninterrupted
    one-process run's."""
    single = run(tmp_path / "single.pt", 1)
    kept = str(tmp_path / "ckpt")
    assert run(tmp_path / "a.pt", 2, "crash-align", kept) is None
    assert torch.load(tmp_path / "ckpt" / "align.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "ckpt" / "finetune.pt").exists()
    assert run(tmp_path / "b.pt", 1, "crash-finetune", kept) is None
    assert torch.load(tmp_path / "ckpt" / "align.pt", weights_only=True)["epoch"] == 3
    assert torch.load(tmp_path / "ckpt" / "finetune.pt", weights_only=True)["epoch"] == 2
    resumed = run(tmp_path / "resumed.pt", 2, "resume", kept)
    assert resumed["world"] == 2
    assert_same_training(single, resumed)


HANGS = """
import sys, time
import torch
from fourtier.errors import exits_cleanly
from fourtier.runtime import distributed

@exits_cleanly
@distributed.names_rank
def main():
    distributed.setup(torch.device("cpu"), timeout_s=3)
    if distributed.rank() == 1:
        time.sleep(30)  # a rank that hangs
    distributed.barrier()

main()
"""


def test_a_hung_rank_becomes_an_error_that_names_the_waiting_rank(tmp_path):
    script = tmp_path / "hangs.py"
    script.write_text(HANGS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--max-restarts=0", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "error: rank 0 of 2 on " in done.stderr and "runtime.timeout_s" in done.stderr, done.stderr[-3000:]
    assert "[rank0]: Traceback" not in done.stderr  # the waiting rank's own error, not torch's internals


EMBEDS = """
import sys
from pathlib import Path
import torch
from fourtier.config.base import load_params
from fourtier.runtime import distributed
from fourtier.text.embed import embed_captions
from fourtier.text.encoder import make_encoder

distributed.setup(torch.device("cpu"))
torch.set_num_threads(1)
params = load_params(path=sys.argv[3])
encoder = make_encoder(params.text_encoder, params.text_encoders, params.embed.max_length, "cpu")
embed_captions(Path(sys.argv[1]), Path(sys.argv[2]), encoder, batch_size=3, max_tokens=8)
distributed.teardown()
"""


def test_embed_on_two_ranks_writes_the_bytes_of_one(tmp_path):
    """Rank r of 2 encodes every other batch of distinct answers and writes its rows in place."""
    import json

    from helpers import REPO

    words = ["a red ball rolls left", "someone waves", "a blue square", "the scene is a kitchen", "jumping", ""]
    rows = [{"video_id": f"v{i}", "prompt_id": p, "answer": words[(i * 3 + j) % len(words)] * (1 + i % 3)}
            for i in range(7) for j, p in enumerate("ABCD")]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = tmp_path / "embeds.py"
    script.write_text(EMBEDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for nproc, out in ((1, "one"), (2, "two")):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
            if nproc > 1 else [sys.executable]
        done = subprocess.run([*launcher, str(script), str(tmp_path / "captions.jsonl"), str(tmp_path / out),
                               str(REPO / "params.yaml")], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one = {p.name: p.read_bytes() for p in sorted((tmp_path / "one").iterdir())}
    two = {p.name: p.read_bytes() for p in sorted((tmp_path / "two").iterdir())}
    assert sorted(one) == ["mask.npy", "meta.json", "pooled.npy", "tokens.npy", "videos.txt"]
    assert two == one
    assert json.loads(one["meta.json"])["distinct_texts"] > 2 * 3  # more than one batch per rank


def test_a_crashed_run_resumed_on_the_same_world_size_is_bit_identical(tmp_path):
    """One process crashes after epoch 2 of stage 1 and resumes: every weight of the result is the uninterrupted
    run's, bit for bit (both stages' checkpoints hold all the state a run draws from)."""
    single = run(tmp_path / "single.pt", 1, "resume", str(tmp_path / "fresh"))  # checkpointed, never interrupted
    kept = str(tmp_path / "ckpt")
    assert run(tmp_path / "a.pt", 1, "crash-align", kept) is None
    assert run(tmp_path / "b.pt", 1, "crash-finetune", kept) is None
    resumed = run(tmp_path / "resumed.pt", 1, "resume", kept)
    assert resumed["state"].keys() == single["state"].keys()
    for key, value in single["state"].items():
        assert torch.equal(resumed["state"][key], value), key
    assert resumed["history"] == single["history"]


def test_srun_jobs_on_one_node_meet_at_their_own_ports(tmp_path, monkeypatch):
    """Under srun the rendezvous is on this (the first) node at a port of the job's own: two jobs that share a
    node do not collide, and one job's command says the same port wherever it is built."""

    from fourtier.config.base import load_params
    from fourtier.runtime.launch import torchrun_command
    from helpers import REPO

    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    rt = load_params(path=REPO / "params.yaml").runtime.model_copy(update={"nnodes": 2, "launcher": "srun"})

    def endpoint(job: str) -> str:
        monkeypatch.setenv("SLURM_JOB_ID", job)
        command = torchrun_command(rt, ["stages/align.py"])
        assert command[0] == "srun" and f"--rdzv-id=fourtier-{job}" in command
        return next(a for a in command if a.startswith("--rdzv-endpoint=")).split(":")[-1]

    assert endpoint("81234") == endpoint("81234") == "16234"
    assert endpoint("81235") != endpoint("81234")
