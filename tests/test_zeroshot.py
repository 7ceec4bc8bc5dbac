"""Zero-shot with stage 1 alone, few-shot draws, class texts and open-vocabulary predict."""
import csv
import json

import numpy as np
import pytest
import torch

from fourtier.data import synthact
from fourtier.errors import DataError
from fourtier.text.classtexts import class_texts, synthact_descriptions, template_texts
from fourtier.evaluation.experiments import (ablation_runs, collect, few_shot_points, gain_ci, report, write_few_shot_table)
from fourtier.config.base import OptimSettings, PROMPT_IDS
from fourtier.evaluation.fewshot import few_shot_subset
from fourtier.evaluation.zeroshot import aligned_over_views, class_scores, zero_shot_metrics
from fourtier.models.ftp import FTP, FTPConfig
from fourtier.train.align import train_alignment
from helpers import ArraySource

T, H, W, D, P = 2, 2, 2, 16, 8


def world(n, n_classes, seed):
    """Clips of class c carry a blob at position c % 4 in colour channel c // 4 of m; each class has one text
    vector (the same for every prompt here), as if every caption of the class said the same thing."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    m = rng.normal(0, 0.1, size=(n, 1, T, H, W, D)).astype(np.float32)
    for i, c in enumerate(labels):
        m[i, 0, :, (c % 4) // W, (c % 4) % W, c // 4] += 3.0
    return m, labels


def class_vectors(n_classes):
    vectors = np.random.default_rng(99).normal(size=(n_classes, P))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("arm, expect_high", [("ftp", True), ("shuffled", False)])
def test_zero_shot_classifies_unseen_clips_from_class_texts_and_the_shuffled_control_does_not(arm, expect_high):
    n_classes = 8
    m, labels = world(400, n_classes, 0)
    text = class_vectors(n_classes)
    pooled = np.repeat(text[labels][:, None, :], 4, axis=1).astype(np.float16)
    if arm == "shuffled":  # the control: the same captions, but not the clip's own
        pooled = pooled[np.random.default_rng(1).permutation(len(pooled))]
    torch.manual_seed(0)
    model = FTP(FTPConfig(D, (T, H, W), ["A", "C"], n_classes=1, text_dim=P))
    train_alignment(model, ArraySource(m), np.arange(300), np.arange(300, 400), pooled,
                    OptimSettings(60, 60, 1e-2, 0.0, (0.9, 0.95), 2), seed=0)
    test_m, test_labels = world(200, n_classes, 5)  # clips never seen in stage 1
    class_emb = {p: torch.from_numpy(text).float() for p in PROMPT_IDS}
    scores = class_scores(aligned_over_views(model, ArraySource(test_m), np.arange(200)), class_emb, model.prompts)
    assert scores.shape == (200, 2, n_classes)
    metrics = zero_shot_metrics(scores, test_labels, model.prompts)
    assert metrics["chance"]["top1"] == pytest.approx(1 / n_classes, abs=1e-4)
    if expect_high:
        assert metrics["combined"]["top1"] > 0.8 and metrics["A"]["top1"] > 0.6
    else:
        assert metrics["combined"]["top1"] < 0.3


def test_zero_shot_metrics_count_top1_and_top5():
    scores = np.zeros((4, 2, 6))
    for i, c in enumerate([0, 1, 2, 3]):
        scores[i, 0, c] = 1.0  # prompt A right for every clip
        scores[i, 1, (c + 1) % 6] = 0.5  # prompt B always wrong, but weaker
    m = zero_shot_metrics(scores, np.array([0, 1, 2, 3]), ["A", "B"])
    assert m["A"]["top1"] == 1.0 and m["B"]["top1"] == 0.0 and m["combined"]["top1"] == 1.0
    assert m["B"]["top5"] == 1.0 and m["chance"] == {"top1": round(1 / 6, 4), "top5": round(5 / 6, 4)}


def test_synthact_descriptions_cover_every_class_and_tell_them_apart():
    for variant, names in (("scenes", synthact.SCENE_CLASSES), ("motion", synthact.MOTION_CLASSES)):
        texts = synthact_descriptions(variant)
        assert sorted(texts) == sorted(names)
        assert all(texts[c][p].strip() for c in texts for p in PROMPT_IDS)
        combined = {" | ".join(texts[c][p] for p in PROMPT_IDS) for c in texts}
        assert len(combined) == len(texts), variant  # no two classes are described identically
    scenes = synthact_descriptions("scenes")
    assert "grass" in scenes["playing soccer"]["D"] and "ball" in scenes["playing soccer"]["A"]
    assert "left" in synthact_descriptions("motion")["moving something left"]["A"]
    template = template_texts(["juggling"])
    assert all("juggling" in template["juggling"][p] for p in PROMPT_IDS)


def test_a_class_texts_file_is_read_and_checked(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"a": {p: f"a {p}" for p in PROMPT_IDS}, "b": {"A": "b"}}))
    with pytest.raises(DataError, match=r"missing or incomplete: \['b'\]"):
        class_texts("description", ["a", "b"], None, path)
    path.write_text(json.dumps({c: {p: f"{c} {p}" for p in PROMPT_IDS} for c in "ab"}))
    assert class_texts("description", ["a", "b"], None, path)["b"]["C"] == "b C"
    with pytest.raises(DataError, match="no built-in class descriptions.*template texts are scored either way"):
        class_texts("description", ["a", "b"], None, tmp_path / "absent.json")


def test_few_shot_draw_is_k_per_class_and_the_same_for_every_arm_and_seed():
    labels = np.repeat(np.arange(3), 10)
    train = np.arange(30)
    first = few_shot_subset(train, labels, 4, seed=0, classes=["x", "y", "z"])
    assert len(first) == 12 and np.bincount(labels[first]).tolist() == [4, 4, 4]
    assert np.array_equal(first, few_shot_subset(train, labels, 4, seed=0, classes=["x", "y", "z"]))
    assert not np.array_equal(first, few_shot_subset(train, labels, 4, seed=1, classes=["x", "y", "z"]))
    assert np.array_equal(few_shot_subset(train, labels, 0, 0, ["x", "y", "z"]), train)
    with pytest.raises(DataError, match="class 'y' has only 2 training clips"):
        few_shot_subset(np.array([0, 1, 2, 10, 11, 20, 21, 22]), labels, 3, 0, ["x", "y", "z"])


def test_shots_ablation_queues_every_arm_and_the_report_has_its_table(tmp_path):
    runs = ablation_runs("shots")
    assert [r.name for r in runs] == ["shots-02", "shots-04", "shots-08", "shots-16"]
    assert runs[0].sets == ["finetune.shots=2"]  # every arm: no finetune.arms override
    with pytest.raises(Exception, match="positive integer"):
        ablation_runs("shots", ["0"])

    def exp(name, ftp, base):
        metrics = {"data/eval/ds/metrics.json": {"data": {
            "ftp": {"top1": {"mean": ftp, "std": 0.01}}, "baseline": {"top1": {"mean": base, "std": 0.02}},
            "ftp_gain_top1": {"mean": ftp - base, "std": 0.01}}}}  # as `dvc exp show` gives it: no list-valued ci95
        params = {"finetune": {"seeds": [0, 1, 2]}}
        return {"revs": [{"rev": name, "name": name, "data": {"params": {"params.yaml": {"data": params}},
                                                             "metrics": metrics, "timestamp": name}}]}

    shown = [{"rev": "abc", "data": None, "experiments": [exp("shots-02", 0.4, 0.3), exp("shots-16", 0.7, 0.68)]}]
    results = collect(shown)
    table = report(results)
    assert "Few-shot" in table and "| 2 | 30.0 +- 2.0 | 40.0 +- 1.0 |" in table and "+10.0 [+7.5, +12.5]" in table  # t(0.975, 2) * 0.01 / sqrt(3)
    assert few_shot_points(results)["ds"]["ftp"][1][0] == 16
    write_few_shot_table(results, tmp_path / "fewshot.csv")  # the data of dvc.yaml's few-shot plot
    with open(tmp_path / "fewshot.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["arm"], r["shots"], r["top1"], r["top1_std"]) for r in rows] == [
        ("baseline", "2", "30.00", "2.00"), ("baseline", "16", "68.00", "2.00"),
        ("ftp", "2", "40.00", "1.00"), ("ftp", "16", "70.00", "1.00")]
    assert {r["dataset"] for r in rows} == {"ds"}
    # runs since the scalar bounds existed carry their own interval, which the report takes as it is
    assert gain_ci({"mean": 0.1, "std": 0.01, "ci95_low": 0.05, "ci95_high": 0.15}, 3) == [0.05, 0.15]
