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
    assert "[ ] models/align/ftp.safetensors" in out


def test_describe_saves_the_tile_and_prints_four_answers(project, testvideos, capsys):
    main(["describe", str(testvideos / "mmaction2_demo.mp4"), "-K", "3", "--tile", "t.jpg"])
    out = capsys.readouterr().out
    assert (project / "t.jpg").stat().st_size > 1000
    for pid in "ABCD":
        assert f"[{pid}]" in out
    assert "K=3" in out and "ERROR" not in out and "asked in four requests" in out


def test_describe_with_a_joint_preset_asks_once_and_prints_the_same_four_answers(project, testvideos, capsys):
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["vlms"]["builtin-joint"] = {"type": "builtin", "joint": True}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    answers = {}
    for vlm in ("builtin", "builtin-joint"):
        main(["describe", str(testvideos / "mmaction2_demo.mp4"), "-K", "3", "--vlm", vlm])
        answers[vlm] = capsys.readouterr().out
    assert "asked in one joint request" in answers["builtin-joint"]
    assert answers["builtin"].split("\n", 1)[1] == answers["builtin-joint"].split("\n", 1)[1]  # the answers


@pytest.mark.parametrize("argv, message", [
    (["predict", "missing.mp4"], "no trained model at models/finetune/synth-scenes/ftp-seed0.safetensors"),
    (["describe", "missing.mp4"], "video not found: missing.mp4"),
    (["describe", "x.mp4", "--vlm", "gpt-9"], "video not found"),
])
def test_bad_input_exits_2_with_a_message(project, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_describe_against_a_failing_server_exits_2_and_says_so(project, testvideos, capsys, monkeypatch):
    """HTTP 500 on every try is no answer: the four errors are shown, and the exit code says the run failed."""
    import yaml

    from fake_openai import FakeOpenAI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeOpenAI(lambda n, key: "500") as server:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["vlms"]["local"] = {"type": "openai", "model": "m", "base_url": server.base_url, "max_retries": 1,
                                   "retry_base_delay": 0.01, "retry_max_delay": 0.02}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with pytest.raises(SystemExit) as exit_:
            main(["describe", str(testvideos / "mmaction2_demo.mp4"), "-K", "3", "--vlm", "local"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2
    assert captured.out.count("ERROR:") == 4 and "4 of 4 prompts got no answer from local" in captured.err


def test_describe_reports_a_broken_video(project, testvideos, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["describe", str(testvideos / "mediabunny_annex-b_truncated.mp4")])
    assert exit_.value.code == 2 and "truncated" in capsys.readouterr().err


@pytest.fixture
def trained_project(project):
    """A project with a (random) tiny backbone and an FTP classifier for synth-scenes, as dvc repro leaves them."""
    import torch

    from fourtier.models.backbone import TinyVideoViT, save_tiny
    from fourtier.models.ftp import FTP, FTPConfig

    torch.manual_seed(0)
    save_tiny(TinyVideoViT(frames=8, size=64, dim=32, depth=1, heads=2), project / "models/backbone", {})
    classes = [f"class {i}" for i in range(10)]
    model = FTP(FTPConfig(32, (8, 4, 4), ["A", "B", "C", "D"], n_classes=10))
    (project / "models/finetune/synth-scenes").mkdir(parents=True)
    model.save(project / "models/finetune/synth-scenes/ftp-seed0", meta={"classes": classes, "arm": "ftp", "seed": 0,
                                                                          "backbone": "tiny"})
    (project / "data/raw/synth-scenes").mkdir(parents=True)
    (project / "data/raw/synth-scenes/classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return project


@pytest.mark.parametrize("clip", ["imageio_test.webm", "mmaction2_demo.mp4", "decord_video_90.mov"])
def test_predict_prints_the_top5_for_real_clips(trained_project, testvideos, capsys, clip):
    """WebM that decord cannot open, anamorphic pixels (SAR 64:51) and rotation metadata all work."""
    main(["predict", str(testvideos / clip)])
    lines = capsys.readouterr().out.splitlines()
    assert "(synth-scenes, ftp seed 0, 2 views)" in lines[0]
    probs = [float(line.split("%")[0]) for line in lines[1:]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and all(line.split("%")[1].strip().startswith("class ")
                                                                              for line in lines[1:])


def test_predict_makes_pixels_square_before_reading_frames(testvideos, tmp_path):
    from fourtier.cli import _decodable
    from fourtier.video import media

    src = testvideos / "mmaction2_demo.mp4"
    out = _decodable(str(src), tmp_path)
    stream = media.probe(out).main_stream
    assert out != str(src) and stream.sar == 1
    display = media.probe(src).main_stream.display_size  # 427 x 256; yuv420p needs even sizes
    assert abs(stream.width - display[0]) <= 1 and stream.height == display[1]
    assert _decodable(str(testvideos / "mmaction2_test.avi"), tmp_path) == str(testvideos / "mmaction2_test.avi")


@pytest.mark.parametrize("clip, reason", [("decord_corrupted.mp4", "corrupt: decoder reported errors"),
                                          ("mediabunny_annex-b_truncated.mp4", "truncated: header says 35.23 s")])
def test_predict_names_why_a_broken_clip_cannot_be_used(trained_project, testvideos, capsys, clip, reason):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(testvideos / clip)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err


def test_predict_ranks_arbitrary_class_names_zero_shot(trained_project, testvideos, capsys):
    """Open vocabulary: stage 1's heads against class-name templates, and the output says it is zero-shot."""
    import torch

    from fourtier.models.ftp import FTP, FTPConfig

    with pytest.raises(SystemExit):  # no stage-1 model yet: a message, not a traceback
        main(["predict", str(testvideos / "mmaction2_demo.mp4"), "--classes", "arm wrestling, juggling"])
    assert "no stage-1 model at models/align/ftp.safetensors" in capsys.readouterr().err
    torch.manual_seed(0)
    FTP(FTPConfig(32, (8, 4, 4), ["A", "B", "C", "D"], n_classes=1, text_dim=384)).save(
        trained_project / "models/align/ftp", parts=("processors", "align_heads"))
    names = ["arm wrestling", "juggling", "sailing"]
    main(["predict", str(testvideos / "mmaction2_demo.mp4"), "--classes", " arm wrestling, juggling,sailing,juggling"])
    lines = capsys.readouterr().out.splitlines()
    assert "zero-shot over 3 class names" in lines[0] and "no model was trained on these classes" in lines[0]
    ranked = [line.split("]")[1].strip() for line in lines[2:]]
    assert sorted(ranked) == sorted(names)  # each name once, duplicates dropped
    totals = [float(line.split("[")[0]) for line in lines[2:]]
    assert totals == sorted(totals, reverse=True) and all(-4 <= t <= 4 for t in totals)
    with pytest.raises(SystemExit):
        main(["predict", str(testvideos / "mmaction2_demo.mp4"), "--classes", "juggling"])
    assert "at least two class names" in capsys.readouterr().err
