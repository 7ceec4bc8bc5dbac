"""`dvc repro` end to end on a tiny profile, in a temporary copy of the repository."""
import csv
import functools
import os
import re
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
    raw["datasets"]["synth-backbone"].update(clips=24, val_fraction=0.25)
    for target in ("synth-scenes", "synth-motion"):
        raw["datasets"][target].update(train_per_class=1, val_per_class=1)
    raw["tile"]["height"] = 48
    raw["backbone_train"].update(epochs=1, batch_size=8)
    raw["align"].update(epochs=2, batch_size=8)
    raw["finetune"].update(epochs=2, seeds=[0, 1], batch_size=8)
    # one process per stage: on a tiny profile spawning side-by-side runs costs more than it saves, and the
    # tests run beside another xdist worker (side by side is tested in tests/test_parallel.py)
    raw["runtime"]["workers"] = 1
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
        if rel.startswith("data/") and (rel.endswith(".gitignore") or rel.startswith("data/sources/watch/")):
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
    meta = json.loads((emb / "meta.json").read_text())
    assert (meta["videos"], meta["texts"]) == (24, 24 * 4)
    kept = mask.sum(-1)  # tokens stored per answer: at most embed.max_tokens = 32
    for j, p in enumerate("ABCD"):  # the full length is counted; an answer beyond 32 tokens keeps 32
        assert kept[:, j].max() == min(meta["answer_tokens"][p]["max"], 32)
    assert meta["answer_tokens"]["C"]["max"] > 32  # SynthAct's detailed answers are long
    assert 1 <= meta["truncated_answers"] <= (kept == 32).sum()


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


def ran(stdout: str) -> list[str]:
    """Stages that ran, less the `sources` stages (about a second; their output changes only with download's
    own inputs, which the table names) and the always-run `watch` fingerprints."""
    return [s for s in re.findall(r"Running stage '([^']+)'", stdout) if not s.startswith(("sources-", "watch@"))]


def test_second_repro_is_a_fast_no_op(repo):
    dst, _ = repo
    start = time.perf_counter()
    proc = run(["dvc", "repro"], dst)
    assert time.perf_counter() - start < 20  # DVC's checks: 8 s on a slow 2-core machine, when three stages ran
    assert "Running stage" not in proc.stdout and "didn't change, skipping" in proc.stdout  # no stage runs always
    assert run(["dvc", "status"], dst).stdout.strip() == "Data and pipelines are up to date."


def test_dvc_metrics_show_prints_every_interval_and_the_timings_stay_out_of_the_lock(repo):
    """`dvc metrics show` drops list-valued metrics, so every interval is two scalars; the per-seed numbers
    are in runs.json; the machine-dependent timings are metrics that no stage outputs, so dvc.lock never
    records them and a fresh clone's run leaves the lock as committed."""
    import json

    dst, _ = repo
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], dst).stdout)
    data = next(iter(shown.values()))["data"]
    metrics = data["data/eval/synth-scenes/metrics.json"]["data"]
    for key in ("ftp_gain_top1", "ftp_minus_random_top1", "ftp_minus_shuffled_top1"):
        assert metrics[key]["ci95_low"] <= metrics[key]["mean"] <= metrics[key]["ci95_high"]
    assert not any(isinstance(v, list) for m in metrics.values() if isinstance(m, dict) for v in m.values())
    runs = json.loads((dst / "data/eval/synth-scenes/runs.json").read_text())
    assert runs["seeds"] == [0, 1] and len(runs["ftp"]["top1"]) == 2
    assert abs(sum(runs["ftp"]["top1"]) / 2 - metrics["ftp"]["top1"]["mean"]) < 1e-4
    assert data["data/timings/evaluate-synth-scenes.json"]["data"]["cpu_latency_ms_per_clip"]["ftp"] > 0
    assert data["data/timings/caption-synth-pretrain.json"]["data"]["mean_latency_s"] >= 0
    assert "ci95_low" in run(["dvc", "metrics", "show"], dst).stdout
    assert "data/timings" not in (dst / "dvc.lock").read_text()


@pytest.fixture
def params_file(repo):
    """params.yaml of the tiny repo, restored after the test edits it."""
    path = repo[0] / "params.yaml"
    original = path.read_text()
    yield path
    path.write_text(original)


@functools.cache
def dag_edges(dst) -> tuple[tuple[str, str], ...]:
    """`dvc dag`'s edges. They depend only on the stages and the dataset lists, which no row of the invalidation
    table changes, so they are read once (each dvc call costs seconds)."""
    return tuple(re.findall(r'"([^"]+)" -> "([^"]+)"', run(["dvc", "dag", "--dot"], dst).stdout))


def would_run(dst) -> list[str]:
    """The stages `dvc repro` would run: those whose own inputs changed (a dry run names them and executes
    nothing) and everything downstream of them in `dvc dag`, whose inputs change once they have run."""
    direct = ran(run(["dvc", "repro", "--dry"], dst).stdout)
    edges = dag_edges(dst)
    todo, found = list(direct), set(direct)
    while todo:
        stage = todo.pop()
        for src, dst_stage in edges:
            if src == stage and dst_stage not in found:
                found.add(dst_stage)
                todo.append(dst_stage)
    return sorted(found)


DOWNSTREAM_OF_ALIGN = ["align", "finetune@synth-scenes", "finetune@synth-motion", "evaluate@synth-scenes",
                       "evaluate@synth-motion", "zeroshot@synth-scenes", "zeroshot@synth-motion"]


# The README's invalidation table, row by row: a selector re-runs exactly these stages.
@pytest.mark.parametrize("change, expected", [
    (dict(vlm="blip2"), ["caption@synth-pretrain", "embed@synth-pretrain", *DOWNSTREAM_OF_ALIGN]),
    (dict(K=3), ["tile@synth-pretrain", "caption@synth-pretrain", "embed@synth-pretrain", *DOWNSTREAM_OF_ALIGN]),
    (dict(backbone="videomae"), ["backbone", "features-pretrain@synth-pretrain", "features-target@synth-scenes",
                                 "features-target@synth-motion", *DOWNSTREAM_OF_ALIGN]),
    (dict(prompts=["B", "C"]), DOWNSTREAM_OF_ALIGN),
    ({"finetune.lr": 3e-4}, ["finetune@synth-scenes", "finetune@synth-motion", "evaluate@synth-scenes",
                             "evaluate@synth-motion"]),
    ({"finetune.arms": ["ftp"]}, DOWNSTREAM_OF_ALIGN),
    ({"align.processor": "attention", "align.objective": "tokens"}, DOWNSTREAM_OF_ALIGN),
    ({"datasets.synth-scenes.seed": 99}, ["download-target@synth-scenes", "features-target@synth-scenes",
                                         "finetune@synth-scenes", "evaluate@synth-scenes", "zeroshot@synth-scenes"]),
    ({"runtime.device": "cpu"}, ["embed@synth-pretrain", "features-pretrain@synth-pretrain", "features-target@synth-scenes",
                                 "features-target@synth-motion", *DOWNSTREAM_OF_ALIGN]),
    ({"features.batch_size": 16, "runtime.loader_workers": 2, "runtime.workers": 1}, []),
    # how processes start and wait, and where checkpoints live, change no number
    ({"runtime.launcher": "srun", "runtime.timeout_s": 60, "runtime.checkpoint_dir": "/shared/ckpt",
      "runtime.rdzv_endpoint": "node1:29500"}, []),
    # features and evaluate give the same bytes at any world size; DDP rounds differently
    ({"runtime.nproc_per_node": 2}, DOWNSTREAM_OF_ALIGN),
    ({"runtime.stage2_parallel": "ddp"}, ["finetune@synth-scenes", "finetune@synth-motion", "evaluate@synth-scenes",
                                          "evaluate@synth-motion"]),
    # the stage-1 corpus is captioned again, but the frozen encoder is not retrained on it
    ({"datasets.synth-pretrain.clips": 28}, ["download-pretrain@synth-pretrain", "tile@synth-pretrain",
                                            "caption@synth-pretrain", "embed@synth-pretrain",
                                            "features-pretrain@synth-pretrain", *DOWNSTREAM_OF_ALIGN]),
    # the encoder's own corpus retrains it and everything it feeds, and captions nothing again
    ({"datasets.synth-backbone.clips": 28}, ["backbone", "features-pretrain@synth-pretrain",
                                            "features-target@synth-scenes", "features-target@synth-motion",
                                            *DOWNSTREAM_OF_ALIGN]),
], ids=["vlm", "K", "backbone", "prompts", "finetune.lr", "finetune.arms", "align-variant", "one-dataset", "device",
    "speed-only", "launch-only", "world-size", "stage2-parallel", "stage-1-corpus", "backbone-corpus"])
def test_each_selector_reruns_exactly_its_stages(repo, params_file, change, expected):
    raw = yaml.safe_load(params_file.read_text())
    for dotted, value in change.items():
        *parents, key = dotted.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[key] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert sorted(would_run(repo[0])) == sorted(expected)


def test_a_failed_backbone_stage_keeps_the_committed_backbone(repo, params_file):
    """DVC deletes a stage's outputs before it runs, and models/backbone is in git, not in DVC's cache: the
    stage keeps it (persist) and swaps a new one in only when it is whole, so an unknown hub id leaves the
    workspace as it was, and going back to the old params needs no retraining."""
    dst, _ = repo
    before = {p.name: p.read_bytes() for p in (dst / "models/backbone").iterdir()}
    raw = yaml.safe_load(params_file.read_text())
    params_file.write_text(yaml.safe_dump({**raw, "backbone": "hf:does-not/exist"}, sort_keys=False))
    env_offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["dvc", "repro", "backbone"], cwd=dst, capture_output=True, text=True, timeout=300,
                          env={**env_offline, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode != 0 and "does-not/exist" in proc.stdout + proc.stderr
    assert {p.name: p.read_bytes() for p in (dst / "models/backbone").iterdir()} == before
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert "backbone" not in ran(run(["dvc", "repro", "--dry", "backbone"], dst).stdout)


def test_bad_param_fails_with_a_clear_message(repo, params_file):
    tiny_params(params_file, K=0)
    proc = run(["python", "stages/tile.py", "synth-pretrain"], repo[0], check=False)
    assert proc.returncode == 2
    assert "error: params.yaml: 'K' (keyframes per tile) must be >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def git_commit(dst, message):
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dst)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", message], dst)


def test_push_then_pull_into_a_fresh_clone_needs_no_rerun_and_run_cache_restores_a_teammates_run(repo):
    """The README's sharing walkthrough on the default remote (a directory beside the checkout)."""
    dst, _ = repo
    git_commit(dst, "results")
    run(["dvc", "push"], dst)
    assert (dst.parent / "fourtier-dvc-remote" / "files" / "md5").is_dir()  # .dvc/config's relative default

    clone = dst.parent / "clone"
    run(["git", "clone", "-q", str(dst), str(clone)], dst.parent)
    run(["dvc", "pull"], clone)
    status = run(["dvc", "status"], clone).stdout
    assert status.strip() == "Data and pipelines are up to date.", status
    assert (clone / "data/raw/synth-scenes/annotations.csv").is_file()
    proc = run(["dvc", "repro"], clone)
    assert ran(proc.stdout) == [], proc.stdout

    # a teammate runs another VLM setting and shares the run itself, not only its outputs (the paid step and
    # its encoding; what follows them runs the same way and would only make this test slower)
    tiny_params(clone / "params.yaml", vlm="builtin-terse")
    assert "Running stage 'caption@synth-pretrain'" in run(["dvc", "repro", "embed@synth-pretrain"], clone).stdout
    run(["dvc", "push", "--run-cache"], clone)

    # someone else, from the original commit, asks for the same setting: nothing is recomputed
    other = dst.parent / "other"
    run(["git", "clone", "-q", str(dst), str(other)], dst.parent)
    run(["dvc", "pull", "--run-cache"], other)
    tiny_params(other / "params.yaml", vlm="builtin-terse")
    proc = run(["dvc", "repro", "--pull", "embed@synth-pretrain"], other)
    for stage in ("caption@synth-pretrain", "embed@synth-pretrain"):  # the paid step and its encoding
        assert f"Stage '{stage}' is cached - skipping run" in proc.stdout
        assert f"Running stage '{stage}'" not in proc.stdout
    assert (other / "data/captions/synth-pretrain/captions.jsonl").read_bytes() == \
        (clone / "data/captions/synth-pretrain/captions.jsonl").read_bytes()


def test_queued_ablation_runs_and_the_report_shows_its_table(repo):
    """The README's ablation recipe: queue with `fourtier ablate`, run with `dvc queue start`, then report.
    Group 1 trains only the baseline arm and group 9 only FTP: evaluate still writes every declared output."""
    import json

    dst, _ = repo
    git_commit(dst, "before ablation")  # experiments start from a commit
    # one seed and one target: the recipe is what is tested, and each further stage only costs time
    queued = run(["fourtier", "ablate", "prompts", "1", "9", "--set", "finetune.seeds=[0]",
                  "--set", "targets=[synth-scenes]"], dst)
    assert "queued 2 experiments" in queued.stdout
    run(["dvc", "queue", "start", "-j", "1"], dst)
    deadline = time.time() + 500
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], dst).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    logs = "".join(run(["dvc", "queue", "logs", name], dst, check=False).stdout[-2000:]
                   for name in ("prompts-g01-none", "prompts-g09-BC"))
    assert status.count("Success") == 2, status + logs
    shown = run(["dvc", "exp", "show", "--json"], dst).stdout
    (dst / "exp.json").write_text(shown)
    out = run(["fourtier", "report", "--json", "exp.json", "--plot", "gains.png"], dst).stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "group" not in line}
    assert set(rows) == {"1", "9"}
    assert rows["9"].split("|")[2:6] == ["  ", " x ", " x ", "  "]  # B and C marked
    # every cell is a measured mean +- std, read from that experiment's own metrics
    exps = {e["name"]: e for entry in json.loads(shown) for r in entry.get("experiments") or [] for e in r["revs"]}
    top1 = exps["prompts-g09-BC"]["data"]["metrics"]["data/eval/synth-scenes/metrics.json"]["data"]["ftp"]["top1"]
    assert f"{100 * top1['mean']:.1f} +- {100 * top1['std']:.1f}" in rows["9"]
    assert (dst / "gains.png").stat().st_size > 1000


def test_editing_a_folder_datasets_csv_reruns_its_download(repo, params_file):
    """The label CSV and the videos of a user's folder live outside DVC's view: a folder dataset must be listed
    under `watch:`, whose fingerprint makes a changed label re-run download, and an unchanged folder re-run
    nothing; the other datasets' downloads never re-run for it."""
    from helpers import index_frames, write_video

    dst, _ = repo
    root = dst.parent / "my-videos"
    root.mkdir(exist_ok=True)
    for name in ("a.mp4", "b.mp4"):
        write_video(root / name, index_frames(6))
    (root / "labels.csv").write_text("path,label\na.mp4,jump\nb.mp4,run\n")
    raw = yaml.safe_load(params_file.read_text())
    raw["datasets"]["mine"] = {"type": "folder", "root": str(root), "csv": "labels.csv", "val_fraction": 0.5}
    raw["targets"] = [*raw["targets"], "mine"]
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    stage = "download-target@mine"
    proc = run(["dvc", "repro", stage], dst, check=False)  # not watched: its changes would go unseen
    assert proc.returncode != 0 and "set watch: [mine] in params.yaml" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    raw["watch"] = ["mine"]
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stage in ran(run(["dvc", "repro", stage], dst).stdout)
    assert ran(run(["dvc", "repro", stage], dst).stdout) == []  # nothing changed: not run again
    (root / "labels.csv").write_text("path,label\na.mp4,jump\nb.mp4,walk\n")  # a corrected label
    assert stage in ran(run(["dvc", "repro", stage], dst).stdout)
    assert (dst / "data/raw/mine/classes.txt").read_text().split("\n")[:2] == ["jump", "walk"]
    write_video(root / "b.mp4", index_frames(8))  # a replaced video
    assert stage in ran(run(["dvc", "repro", stage], dst).stdout)
    proc = run(["dvc", "repro", "download-target@synth-scenes"], dst)  # another dataset: its input did not change
    assert ran(proc.stdout) == [], proc.stdout


def test_attention_processor_with_the_token_wise_objective_runs_from_embed_to_zeroshot(repo, params_file):
    """align.processor: attention (the default is the paper's) and align.objective: tokens through the real
    stages: stage 1 trains and scores both arms token-wise (the shuffled control permutes the token targets too),
    stage 2 loads the attention processors, zero-shot scores class texts token-wise."""
    import json

    dst, _ = repo
    raw = yaml.safe_load(params_file.read_text())
    raw["align"].update(processor="attention", objective="tokens")
    raw["embed"]["max_tokens"] = 8  # SynthAct's answers are longer: align must say so
    raw["finetune"]["arms"] = ["baseline", "ftp", "shuffled"]
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = run(["dvc", "repro", "zeroshot@synth-scenes", "evaluate@synth-scenes"], dst)
    assert "longer than embed.max_tokens = 8" in proc.stdout + proc.stderr
    for arm in ("ftp", "shuffled"):
        config = json.loads((dst / f"models/align/{arm}.json").read_text())["config"]
        assert (config["processor"], config["objective"]) == ("attention", "tokens")
    retrieval = json.loads((dst / "models/align_metrics.json").read_text())
    assert all(0 <= retrieval[arm][p]["R@1"] <= 1 for arm in ("ftp", "shuffled") for p in "ABCD")
    saved = json.loads((dst / "models/finetune/synth-scenes/ftp-seed0.json").read_text())
    assert saved["config"]["processor"] == "attention"
    zeroshot = json.loads((dst / "data/eval/synth-scenes/zeroshot.json").read_text())
    assert set(zeroshot["template"]) == {"ftp", "shuffled"}
    assert 0 <= zeroshot["template"]["ftp"]["combined"]["top1"] <= 1
    metrics = json.loads((dst / "data/eval/synth-scenes/metrics.json").read_text())
    assert {"baseline", "ftp", "shuffled"} <= set(metrics)


def test_three_splits_and_a_cross_dataset_test_on_local_mirrors_of_ucf101_and_hmdb51(repo, params_file, tmp_path):
    """UCF-101 with split: all and HMDB51 (split 1) from mirrors on 127.0.0.1, both targets: the videos are
    ingested and their m computed once, stage 2 trains every arm and seed on each official split's training clips,
    and evaluate reports the mean and sample std over splits of each split's mean over seeds (the protocol of
    the paper and its peers); the cross-dataset stage tests the UCF-101 models on HMDB51's clips of the classes
    the class map pairs."""
    import json
    import statistics

    from helpers import ucf_mirror, hmdb_mirror, served_directory

    dst, _ = repo
    www = tmp_path / "www"
    for kind in ("ucf", "hmdb"):
        (www / kind).mkdir(parents=True)
    ucf_mirror(www / "ucf", tmp_path / "build-ucf", ["Biking", "PushUps"])
    hmdb_mirror(www / "hmdb", tmp_path / "build-hmdb", ["pushup", "ride_bike", "smile"])
    (dst / "maps").mkdir(exist_ok=True)
    (dst / "maps/ucf_hmdb.csv").write_text("train_class,test_class\nBiking,ride_bike\nPushUps,pushup\n")
    with served_directory(www) as url:
        raw = yaml.safe_load(params_file.read_text())
        common = {"short_side": 0, "cache_dir": str(tmp_path / "cache")}
        raw["datasets"]["ucf"] = {"type": "ucf101", "split": "all", **common, "archive_url": f"{url}/ucf/UCF101.tar.gz",
                                  "splits_url": f"{url}/ucf/splits.zip"}
        raw["datasets"]["hmdb"] = {"type": "hmdb51", "split": 1, **common, "archive_url": f"{url}/hmdb/hmdb51.tar.gz",
                                   "splits_url": f"{url}/hmdb/splits.zip"}
        raw["targets"] = [*raw["targets"], "ucf", "hmdb"]
        raw["cross_dataset"] = [{"train": "ucf", "test": "hmdb", "class_map": "maps/ucf_hmdb.csv", "on": "all"}]
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        proc = run(["dvc", "repro", "evaluate@ucf", "cross-dataset@0"], dst)
    stages = ran(proc.stdout)
    assert stages.count("features-target@ucf") == 1 and "finetune@hmdb" not in stages  # m once; no stage 2 on hmdb
    with open(dst / "data/raw/ucf/annotations.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(r["folds"] for r in rows)
    assert sorted((dst / "models/finetune/ucf").glob("*.safetensors")) == sorted(
        dst / f"models/finetune/ucf/{arm}-split{k}-seed{seed}.safetensors"
        for arm in ("baseline", "ftp", "random", "shuffled") for k in (1, 2, 3) for seed in (0, 1))
    runs = json.loads((dst / "data/eval/ucf/runs.json").read_text())
    metrics = json.loads((dst / "data/eval/ucf/metrics.json").read_text())
    assert metrics["splits"] == 3 and metrics["val_clips"] == {"split1": 2, "split2": 2, "split3": 2}
    for arm in ("baseline", "ftp"):
        per_split = [statistics.mean(runs[f"split{k}"][arm]["top1"]) for k in (1, 2, 3)]
        assert metrics[arm]["top1"]["mean"] == round(statistics.mean(per_split), 4)
        assert metrics[arm]["top1"]["std"] == round(statistics.stdev(per_split), 4)  # sample std over splits
        assert metrics["split2"][arm]["top1"]["mean"] == round(statistics.mean(runs["split2"][arm]["top1"]), 4)
    gain = [statistics.mean(runs[f"split{k}"]["ftp"]["top1"]) - statistics.mean(runs[f"split{k}"]["baseline"]["top1"])
            for k in (1, 2, 3)]
    assert metrics["ftp_gain_top1"]["mean"] == round(statistics.mean(gain), 4)  # paired by split
    assert "(mean +- sample std over 3 official splits, each the mean of 2 seeds)" in proc.stdout
    cross = json.loads((dst / "data/eval/cross/ucf_to_hmdb/metrics.json").read_text())
    # HMDB split 1 lists a (train) and b (test) of each class; c is unused; smile has no counterpart
    assert (cross["test_clips"], cross["test_clips_unmapped"], cross["shared_classes"]) == (4, 2, 2)
    assert cross["train_split"] == 1 and {"baseline", "ftp", "ftp_gain_top1"} <= set(cross)
    crossed = json.loads((dst / "data/eval/cross/ucf_to_hmdb/runs.json").read_text())
    assert set(crossed["per_class"]["ftp"]) == {"pushup", "ride_bike"}
    assert "cross-dataset ucf -> hmdb: 4 clips of 2 shared classes" in proc.stdout


def default_copy(dst: Path, work: Path) -> Path:
    """A copy of the tiny repository (cache and run-cache included) back on the tiny profile's params, its
    outputs brought back to them by `dvc repro` (mostly restored from the run-cache): other tests of this module
    leave the fixture's workspace on their own outputs."""
    shutil.copytree(dst, work, symlinks=True)
    shutil.copy2(REPO / "params.yaml", work / "params.yaml")
    tiny_params(work / "params.yaml")
    run(["dvc", "repro"], work)
    return work


def test_dvc_repro_on_two_processes_gives_the_bytes_and_metrics_of_one(repo, tmp_path):
    """runtime.nproc_per_node: 2 from `dvc repro` itself: features on 2 ranks writes the bytes of one process;
    align (DDP) and finetune (runs spread over the ranks) give the metrics of one process within one clip per
    arm (DDP's all-reduce rounds differently, and the tiny profile has few validation clips)."""
    import json

    dst, _ = repo
    two = default_copy(dst, tmp_path / "two")
    feature_files = lambda: {p.name: p.read_bytes() for p in sorted((two / "data/features/synth-scenes").iterdir())}
    features_one = feature_files()
    one = json.loads((two / "data/eval/synth-scenes/metrics.json").read_text())
    runs_one = json.loads((two / "data/eval/synth-scenes/runs.json").read_text())
    raw = yaml.safe_load((two / "params.yaml").read_text())
    raw["runtime"]["nproc_per_node"] = 2
    (two / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = run(["dvc", "repro", "-f", "-s", "features-target@synth-scenes"], two)
    assert "2 processes (1 node x 2) through torchrun" in proc.stdout
    assert feature_files() == features_one
    proc = run(["dvc", "repro", "evaluate@synth-scenes"], two)
    assert "align: 2 processes" in proc.stdout and "finetune synth-scenes: 2 processes" in proc.stdout
    both = json.loads((two / "data/eval/synth-scenes/metrics.json").read_text())
    assert both["val_clips"] == one["val_clips"]
    for arm in ("baseline", "ftp", "random", "shuffled"):
        assert abs(both[arm]["top1"]["mean"] - one[arm]["top1"]["mean"]) <= 1 / one["val_clips"] + 1e-9, arm
    # the baseline has no stage-1 part: its runs are trained exactly as one process trains them
    runs_two = json.loads((two / "data/eval/synth-scenes/runs.json").read_text())
    assert runs_two["baseline"] == runs_one["baseline"]
    # zeroshot deals the clips out and gathers them: on the same stage-1 models, 2 ranks write 1 process's bytes
    zeroshot = two / "data/eval/synth-scenes/zeroshot.json"
    assert "zeroshot synth-scenes: 2 processes" in run(["python", "stages/zeroshot.py", "synth-scenes"], two).stdout
    on_two = zeroshot.read_bytes()
    raw["runtime"]["nproc_per_node"] = 1
    (two / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["python", "stages/zeroshot.py", "synth-scenes"], two)
    assert zeroshot.read_bytes() == on_two


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_finetune_on_two_nodes_meets_at_the_rendezvous_and_needs_a_shared_checkpoint_dir(repo, tmp_path):
    """The plain two-launcher form: the same stage command on two "nodes" (processes on 127.0.0.1 with their
    own home, hence their own cache dir), which meet at runtime.rdzv_endpoint. A checkpoint directory in each
    home is not shared: both stop before any work, naming the rank that cannot see rank 0's. A shared one
    trains, data parallel over both, the metrics of one process within one clip per arm."""
    import json

    dst, _ = repo
    work = default_copy(dst, tmp_path / "work")
    one = json.loads((work / "data/eval/synth-scenes/metrics.json").read_text())
    raw = yaml.safe_load((work / "params.yaml").read_text())

    def both_nodes(checkpoint_dir: str):
        raw["runtime"].update(nnodes=2, nproc_per_node=1, rdzv_endpoint=f"127.0.0.1:{free_port()}",
                              stage2_parallel="ddp", checkpoint_dir=checkpoint_dir, timeout_s=120)
        (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        nodes = []
        for name in ("node-a", "node-b"):
            home = tmp_path / name
            home.mkdir(exist_ok=True)
            env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                   "OMP_NUM_THREADS": "1"}
            env.pop("FOURTIER_CACHE", None)
            nodes.append(subprocess.Popen(["python", "stages/finetune.py", "synth-scenes"], cwd=work, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [node.communicate(timeout=600) for node in nodes]
        return [(node.returncode, out, err) for node, (out, err) in zip(nodes, outputs)]

    results = both_nodes("")
    assert all(code != 0 for code, _, _ in results)
    errors = "".join(err for _, _, err in results)
    assert "is not shared: rank 1 on" in errors and "runtime.checkpoint_dir" in errors, errors[-3000:]

    results = both_nodes(str(tmp_path / "shared"))
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    assert all("2 processes (2 nodes x 1) through torchrun" in out for _, out, _ in results)
    raw["runtime"].update(nnodes=1, rdzv_endpoint="", stage2_parallel="runs", checkpoint_dir="")
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(["python", "stages/evaluate.py", "synth-scenes"], work)
    two = json.loads((work / "data/eval/synth-scenes/metrics.json").read_text())
    for arm in ("baseline", "ftp", "random", "shuffled"):
        assert abs(two[arm]["top1"]["mean"] - one[arm]["top1"]["mean"]) <= 1 / one["val_clips"] + 1e-9, arm


def test_the_sbatch_script_runs_the_pipeline_on_two_nodes_through_srun(repo, tmp_path):
    """cluster/fourtier.sbatch as SLURM would run it on a 2-node allocation: `dvc exp run` on the first node,
    each splitting stage through `srun` (here tests/fake_srun.py: one process per "node", each with its own
    home) and torchrun's c10d rendezvous. The experiment's metrics are one process's within one clip per arm."""
    import json

    dst, _ = repo
    work = default_copy(dst, tmp_path / "work")
    one = {name: json.loads((work / f"data/eval/{name}/metrics.json").read_text()) for name in ("synth-scenes", "synth-motion")}
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests/fake_srun.py'} \"$@\"\n")
    (fake_bin / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2",
           "SLURM_GPUS_ON_NODE": "1", "SLURM_SUBMIT_DIR": str(work), "FAKE_SRUN_HOMES": str(tmp_path / "homes")}
    proc = subprocess.run(["bash", str(REPO / "cluster/fourtier.sbatch"), "-S", f"runtime.rdzv_endpoint=127.0.0.1:{free_port()}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "align: 2 processes (2 nodes x 1) through srun + torchrun" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "homes").iterdir()) == ["node-0", "node-1"]
    for name in ("synth-scenes", "synth-motion"):
        two = json.loads((work / f"data/eval/{name}/metrics.json").read_text())
        for arm in ("baseline", "ftp", "random", "shuffled"):
            assert abs(two[arm]["top1"]["mean"] - one[name][arm]["top1"]["mean"]) <= 1 / one[name]["val_clips"] + 1e-9, \
                (name, arm)


def test_a_sharded_corpus_gives_the_tiles_and_m_of_one_file_per_clip(repo, tmp_path):
    """download.shard_above below the corpus: its videos go into zip shards (24 clips, 7 per shard: 4 shards, the
    last one short) and annotations.csv gives each clip's member. Tiling and the feature cache read the clips
    from there, and write the very bytes they write from one file per clip."""
    import json
    import zipfile

    dst, _ = repo
    work = default_copy(dst, tmp_path / "work")
    ds = work / "data/raw/synth-pretrain"
    outputs = lambda: {p.relative_to(work).as_posix(): p.read_bytes() for d in ("data/tiles/synth-pretrain",
                       "data/features/synth-pretrain") for p in sorted((work / d).rglob("*")) if p.is_file()}
    files_before = outputs()
    videos_before = {p.name: p.read_bytes() for p in (ds / "videos").iterdir()}
    manifest_before = json.loads((ds / "manifest.json").read_text())
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["download"].update(shard_above=10, shard_size=7)
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = run(["dvc", "repro", "tile@synth-pretrain", "features-pretrain@synth-pretrain"], work)
    assert "in 4 shards" in proc.stdout
    assert sorted(p.name for p in ds.iterdir()) == ["annotations.csv", "attributes.csv", "classes.txt",
                                                    "manifest.json", "shards"]
    with open(ds / "annotations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"].split(":")[0] for r in rows] == [f"shards/shard-{i // 7:05d}.zip" for i in range(24)]
    for r in rows:  # each location holds that clip's own bytes
        shard, member = r["path"].split(":")
        with zipfile.ZipFile(ds / shard) as zf:
            assert zf.getinfo(member).compress_type == zipfile.ZIP_STORED
            assert zf.read(member) == videos_before[f"{r['video_id']}.mp4"]
    manifest = json.loads((ds / "manifest.json").read_text())
    assert list(manifest["checksums"].values()) == list(manifest_before["checksums"].values())
    assert manifest["shards"] == {"clips_per_shard": 7, "count": 4}
    assert outputs() == files_before


def test_outputs_are_links_into_the_cache_and_reruns_leave_the_cache_intact(repo):
    """.dvc/config's cache.type links outputs to the cache (hardlinks on one filesystem): a tracked file is its
    cache object, read-only. After the re-runs of the tests above (params changed, stages re-run, outputs
    replaced), every cache object still holds the bytes its name (their md5) says: no stage wrote into a linked
    output."""
    import hashlib

    dst, _ = repo
    tile_index = dst / "data/tiles/synth-pretrain/index.csv"
    digest = hashlib.md5(tile_index.read_bytes()).hexdigest()
    assert os.path.samefile(tile_index, dst / ".dvc/cache/files/md5" / digest[:2] / digest[2:])
    assert tile_index.stat().st_mode & 0o222 == 0  # read-only (by mode: root may write anyway)
    objects = [p for p in (dst / ".dvc/cache/files/md5").rglob("*") if p.is_file() and p.suffix != ".dir"]
    assert len(objects) > 100
    for obj in objects:
        assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name, obj
