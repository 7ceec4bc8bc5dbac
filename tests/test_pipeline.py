"""`dvc repro` end to end on a tiny profile, in a temporary copy of the repository."""
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def run(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tiny_params(path: Path, **changes) -> None:
    raw = yaml.safe_load(path.read_text())
    raw["datasets"]["synth-pretrain"].update(clips=24, val_fraction=0.25)
    for target in ("synth-scenes", "synth-motion"):
        raw["datasets"][target].update(train_per_class=1, val_per_class=1)
    raw["tile"]["height"] = 48
    raw["backbone_train"].update(epochs=1, batch_size=8)
    raw["align"].update(epochs=2, batch_size=8)
    raw["finetune"].update(epochs=2, seeds=[0, 1], batch_size=8)
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dst = tmp_path_factory.mktemp("repo")
    files = run(["git", "ls-files", "-co", "--exclude-standard"], REPO).stdout.split()
    for rel in files:
        if (REPO / rel).is_file() and not rel.startswith("data/"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    for rel in files:
        if rel.startswith("data/") and rel.endswith(".gitignore"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    run(["git", "init", "-q"], dst)
    tiny_params(dst / "params.yaml")
    # like a clone: a repository with a commit (dvclive reads the revision)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dst)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny profile"], dst)
    start = time.perf_counter()
    proc = run(["dvc", "repro"], dst)
    print(f"tiny dvc repro: {time.perf_counter() - start:.1f} s")
    return dst, proc


def test_vlm_selector_reruns_caption_and_prompts_never_recaption(repo, params_file):
    dst, _ = repo
    original = params_file.read_text()
    tiny_params(params_file, vlm="builtin-terse")
    assert changed_stages(dst) == ["caption@synth-pretrain"]
    params_file.write_text(original)
    tiny_params(params_file, prompts=["B", "C"])
    assert "caption@synth-pretrain" not in changed_stages(dst)


def test_captions_and_embeddings_follow_their_contracts(repo):
    import json

    import numpy as np

    dst, _ = repo
    rows = [json.loads(line) for line in (dst / "data/captions/synth-pretrain/captions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 * 4 and {r["prompt_id"] for r in rows} == {"A", "B", "C", "D"}
    assert all(r["answer"] and r["vlm"] == "builtin" and r["error"] == "" for r in rows)
    emb = dst / "data/embeddings/synth-pretrain"
    tokens, mask, pooled = (np.load(emb / f"{n}.npy") for n in ("tokens", "mask", "pooled"))
    assert tokens.shape == (24, 4, 32, 384) and tokens.dtype == np.float16
    assert mask.shape == (24, 4, 32) and mask[:, :, 0].all()
    assert pooled.shape == (24, 4, 384) and np.allclose(np.linalg.norm(pooled.astype(float), axis=-1), 1, atol=1e-2)
    assert (emb / "videos.txt").read_text().split() == [f"pretrain-{i:06d}" for i in range(24)]


def test_repro_produces_the_contracts(repo):
    dst, proc = repo
    assert "tile synth-pretrain: 24 tiled, 0 skipped" in proc.stdout
    for ds, n in (("synth-pretrain", 24), ("synth-scenes", 20), ("synth-motion", 24)):
        with open(dst / "data/raw" / ds / "annotations.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == n and all((dst / "data/raw" / ds / r["path"]).is_file() for r in rows)
        assert (dst / "data/raw" / ds / "classes.txt").read_text().count("\n") == {"synth-pretrain": 30, "synth-scenes": 10, "synth-motion": 12}[ds]
    with open(dst / "data/tiles/synth-pretrain/index.csv") as fh:
        index = list(csv.DictReader(fh))
    assert len(index) == 24 and all(r["status"] == "ok" and len(r["frame_indices"].split(";")) == 5 for r in index)
    assert (dst / "dvc.lock").exists()


def test_second_repro_is_a_fast_no_op(repo):
    dst, _ = repo
    start = time.perf_counter()
    proc = run(["dvc", "repro"], dst)
    assert time.perf_counter() - start < 5
    assert "Data and pipelines are up to date" in proc.stdout


@pytest.fixture
def params_file(repo):
    """params.yaml of the tiny repo, restored after the test edits it."""
    path = repo[0] / "params.yaml"
    original = path.read_text()
    yield path
    path.write_text(original)


def changed_stages(dst) -> list[str]:
    status = run(["dvc", "status"], dst).stdout
    return sorted(line.strip().rstrip(":") for line in status.splitlines() if line and not line[0].isspace())


def test_changing_K_invalidates_tile_and_caption_only(repo, params_file):
    tiny_params(params_file, K=3)
    # dvc status names the stages whose own inputs changed; embed follows once caption has re-run
    assert changed_stages(repo[0]) == ["caption@synth-pretrain", "tile@synth-pretrain"]


def test_changing_one_dataset_invalidates_only_its_download(repo, params_file):
    raw = yaml.safe_load(params_file.read_text())
    raw["datasets"]["synth-scenes"]["seed"] = 99
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert changed_stages(repo[0]) == ["download-target@synth-scenes"]


def test_bad_param_fails_with_a_clear_message(repo, params_file):
    tiny_params(params_file, K=0)
    proc = run(["python", "stages/tile.py", "synth-pretrain"], repo[0], check=False)
    assert proc.returncode == 2
    assert "error: params.yaml: 'K' (keyframes per tile) must be >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr
