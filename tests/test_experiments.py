"""Ablation recipes: which experiments each queues (the report is checked on real runs in test_pipeline)."""
import pytest

from fourtier.errors import ParamsError
from fourtier.evaluation.experiments import PROMPT_GROUPS, ablation_runs, collect, report


def test_prompt_groups_are_table_7():
    assert len(PROMPT_GROUPS) == 16 and 12 not in PROMPT_GROUPS
    assert PROMPT_GROUPS[1] == () and PROMPT_GROUPS[9] == ("B", "C") and PROMPT_GROUPS[13] == ("A", "B", "C")
    assert PROMPT_GROUPS[17] == ("A", "B", "C", "D") and len(set(PROMPT_GROUPS.values())) == 16


def test_prompt_ablation_queues_16_runs_training_only_what_it_compares():
    runs = ablation_runs("prompts")
    assert len(runs) == 16 and len({r.name for r in runs}) == 16
    first, bc = runs[0], next(r for r in runs if r.name == "prompts-g09-BC")
    assert first.sets == ["prompts=[]", "finetune.arms=[baseline]"]
    assert bc.command() == ["dvc", "exp", "run", "--queue", "-n", "prompts-g09-BC", "-S", "prompts=[B,C]",
                            "-S", "finetune.arms=[ftp]"]


def test_other_ablations_and_extra_settings():
    assert [r.name for r in ablation_runs("K")] == ["K-1", "K-3", "K-5", "K-7"]
    backbone = ablation_runs("backbone", ["videomae", "hf:org/model"], ["finetune.seeds=[0]"])
    assert [r.name for r in backbone] == ["backbone-videomae", "backbone-hf_org_model"]
    assert backbone[1].sets == ["backbone=hf:org/model", "finetune.arms=[baseline,ftp]", "finetune.seeds=[0]"]


@pytest.mark.parametrize("kind, values, message", [
    ("prompt", None, "unknown ablation 'prompt'"),
    ("prompts", ["12"], "unknown prompt group(s) [12]"),
    ("K", ["0"], "K must be a positive integer, got '0'"),
])
def test_bad_ablation_requests_are_named(kind, values, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ablation_runs(kind, values)


def test_report_without_finished_experiments_says_what_to_do():
    assert collect([{"rev": "workspace", "data": None, "experiments": None}]) == []
    assert "fourtier ablate prompts" in report([])


def test_report_skips_experiments_that_have_not_finished():
    def exp(name, state, top1):
        metrics = {"data/eval/ds/metrics.json": {"data": {"ftp": {"top1": {"mean": top1, "std": 0.0}}}}}
        return {"revs": [{"rev": name, "name": name, "data": {"params": {"params.yaml": {"data": {"prompts": ["B"]}}},
                                                             "metrics": metrics, "timestamp": "t"}}],
                "executor": {"state": state} if state else None}

    shown = [{"rev": "abc", "data": None, "experiments": [exp("prompts-g03-B", "success", 0.5),
                                                          exp("prompts-g04-C", "running", 0.9),
                                                          exp("prompts-g05-D", None, 0.7)]}]
    assert sorted(r.name for r in collect(shown)) == ["prompts-g03-B", "prompts-g05-D"]
    table = report(collect(shown))
    assert "50.0 +- 0.0" in table and "70.0 +- 0.0" in table and "90.0" not in table
