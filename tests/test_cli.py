"""The `fourtier` command as a user runs it."""
import shutil

import pytest

from fourtier.cli import main
from helpers import REPO


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_info_lists_selectors_presets_and_missing_artifacts(project, capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "vlm: builtin" in out and "vlms: builtin, builtin-terse" in out
    assert "[ ] models/align/ftp.pt" in out


def test_describe_saves_the_tile_and_prints_four_answers(project, testvideos, capsys):
    main(["describe", str(testvideos / "mmaction2_demo.mp4"), "-K", "3", "--tile", "t.jpg"])
    out = capsys.readouterr().out
    assert (project / "t.jpg").stat().st_size > 1000
    for pid in "ABCD":
        assert f"[{pid}]" in out
    assert "K=3" in out and "ERROR" not in out


@pytest.mark.parametrize("argv, message", [
    (["predict", "missing.mp4"], "no trained model at models/finetune/synth-scenes/ftp-seed0.pt"),
    (["describe", "missing.mp4"], "video not found: missing.mp4"),
    (["describe", "x.mp4", "--vlm", "gpt-9"], "video not found"),
])
def test_bad_input_exits_2_with_a_message(project, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_describe_reports_a_broken_video(project, testvideos, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["describe", str(testvideos / "mediabunny_annex-b_truncated.mp4")])
    assert exit_.value.code == 2 and "truncated" in capsys.readouterr().err
