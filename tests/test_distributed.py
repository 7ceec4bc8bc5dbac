"""align and finetune under torchrun: 2 CPU processes (gloo) against one process."""
import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def run(out: Path, nproc: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    done = subprocess.run([*launcher, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


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
    # The trained models compute the same function. (Single weights may still differ: a bias that only shifts
    # softmax scores has a zero true gradient, and Adam turns its rounding noise into lr-sized steps.)
    for key, value in single["outputs"].items():
        assert torch.allclose(ddp["outputs"][key], value, atol=1e-4), key
    assert ddp["retrieval"] == single["retrieval"]
    assert len(ddp["history"]) == len(single["history"]) == 3
    for a, b in zip(single["history"], ddp["history"]):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    # the weights did move: the comparison is not between two untouched models
    torch.manual_seed(0)
    from ddp_worker import FTP, FTPConfig, D, H, T, W
    untouched = FTP(FTPConfig(D, (T, H, W), ["A", "B"], n_classes=3, text_dim=6)).state_dict()
    assert not torch.allclose(untouched["classifier.head.weight"], single["state"]["classifier.head.weight"])
    assert not torch.allclose(untouched["processors.A.proj_s.net.1.weight"], single["state"]["processors.A.proj_s.net.1.weight"])
