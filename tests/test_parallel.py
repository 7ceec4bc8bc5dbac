"""Independent training runs side by side (fourtier.runtime.parallel): how many at once, results in order, errors, and
the same numbers as one run at a time."""
import pytest
import torch

from fourtier.errors import DataError, FourtierError
from fourtier.runtime.parallel import run_parallel, run_slots
from helpers import REPO, sleepy_job, stage2_job


@pytest.mark.parametrize("runs, workers, device, world, expected", [
    (12, 2, "cpu", 1, (2, 1)),   # the default: two single-threaded runs at a time on 2 cores
    (2, 16, "cpu", 1, (2, 8)),   # fewer runs than cores: the rest of the cores become threads
    (1, 2, "cpu", 1, (1, 2)),
    (12, 8, "cuda", 1, (1, 8)),  # one GPU: one run at a time
    (12, 4, "cpu", 2, (1, 2)),   # under torchrun the ranks share the cores and take the runs in turn
])
def test_run_slots(runs, workers, device, world, expected):
    assert run_slots(runs, workers, device, world) == expected


def test_side_by_side_returns_values_in_job_order_with_the_threads_asked(capsys):
    values = run_parallel(sleepy_job, [0, 1, 2, 3], processes=2, threads=1, desc="test", steps_per_job=2)
    assert values == [(0, 1), (1, 1), (2, 1), (3, 1)]  # job order, although later jobs end first
    assert "job 3 done" in capsys.readouterr().out


def test_a_failing_job_raises_its_own_error_in_the_caller():
    with pytest.raises(DataError, match="job -1 is broken"):
        run_parallel(sleepy_job, [0, -1, 2], processes=2, threads=1, desc="test", steps_per_job=2)


def test_a_killed_worker_is_a_clear_error():
    with pytest.raises(FourtierError, match="a worker process died.*the same command resumes them"):
        run_parallel(sleepy_job, [0, 99], processes=2, threads=1, desc="finetune x", steps_per_job=2)


def test_a_run_gives_the_same_weights_in_a_worker_as_here():
    here = run_parallel(stage2_job, [0, 1], processes=1, threads=1, desc="test", steps_per_job=2)
    there = run_parallel(stage2_job, [0, 1], processes=2, threads=1, desc="test", steps_per_job=2)
    for a, b in zip(here, there):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(here[0]["classifier.head.weight"], here[1]["classifier.head.weight"])


def test_a_run_that_loses_the_race_for_dvclives_signal_file_still_ends(tmp_path, monkeypatch):
    """dvclive's Live.end() checks that its one VS Code signal file exists, then removes it; when another run
    side by side removes it in between, os.remove raises. The finetune stage's end_live lets the run finish."""
    import importlib.util
    import os

    from dvclive import Live

    spec = importlib.util.spec_from_file_location("finetune_stage", REPO / "stages/finetune.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    signal = tmp_path / ".dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED"
    real_exists = os.path.exists

    def run_that_loses_the_race(name):
        live = Live(str(tmp_path / name), dvcyaml=False, save_dvc_exp=False, report=None)
        live.log_metric("loss", 1.0)
        live.next_step()
        assert signal.exists()
        signal.unlink()  # the other run removed it after this one's check
        return live

    monkeypatch.setattr(os.path, "exists", lambda p: str(p).endswith("DVCLIVE_STEP_COMPLETED") or real_exists(p))
    with pytest.raises(FileNotFoundError):
        run_that_loses_the_race("a").end()  # dvclive alone fails the run
    stage.end_live(run_that_loses_the_race("b"))
    assert (tmp_path / "b" / "metrics.json").is_file()  # the run's summary was written before the clean-up


def test_map_progress_hands_out_items_only_as_fast_as_their_results_are_taken():
    """A caller slower than its workers (tile on 2 cores) must not hold every result: at most 8 chunks per
    worker are started beyond what was taken, and the results still come in input order."""
    import time

    import helpers
    from fourtier.runtime.parallel import map_progress

    helpers.STARTED.value = 0
    n, workers = 3000, 2
    window = 8 * workers * 16  # chunks of 16 items at this size
    taken, ahead = [], 0
    for item, _ in map_progress(helpers.counted, range(n), workers, "test"):
        taken.append(item)
        ahead = max(ahead, helpers.STARTED.value - len(taken))
        if len(taken) % 100 == 0:
            time.sleep(0.05)  # a slow caller
    assert taken == list(range(n))
    assert ahead <= window + 16, ahead


def test_map_progress_lets_a_caller_stop_early():
    import helpers
    from fourtier.runtime.parallel import map_progress

    for item, _ in map_progress(helpers.counted, range(5000), 2, "test"):
        if item == 10:
            break  # the pool's task thread must not wait forever on the items not handed out
