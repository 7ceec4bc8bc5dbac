import copy

import pytest
import yaml

from fourtier.config.base import load_params, parse_params
from fourtier.errors import ParamsError
from helpers import REPO

DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(**changes):
    raw = copy.deepcopy(DEFAULT)
    raw.update(changes)
    return raw


def test_default_params_load():
    p = load_params(path=REPO / "params.yaml")
    assert p.vlm == "builtin" and p.K == 5 and p.prompts == ("A", "B", "C", "D")
    assert p.pretrain == ("synth-pretrain",) and set(p.targets) == {"synth-scenes", "synth-motion"}
    assert p.dataset("synth-pretrain").clips >= 500  # the captioned stage-1 corpus
    assert p.backbone_train.corpus == "synth-backbone" and p.dataset("synth-backbone").clips >= 2000


def test_the_backbone_corpus_is_a_defined_dataset_and_never_a_target():
    raw = with_change()
    raw["backbone_train"]["corpus"] = "synth-backbon"
    with pytest.raises(ParamsError, match=r"'backbone_train.corpus' is 'synth-backbon'.*not defined.*synth-backbone"):
        parse_params(raw)
    raw["backbone_train"]["corpus"] = "synth-scenes"
    with pytest.raises(ParamsError, match=r"'backbone_train.corpus' is 'synth-scenes', a target"):
        parse_params(raw)
    raw["backbone_train"]["corpus"] = "synth-pretrain"  # the stage-1 corpus itself is allowed
    assert parse_params(raw).backbone_train.corpus == "synth-pretrain"


def test_a_selected_dataset_that_reads_outside_the_workspace_must_be_watched(tmp_path):
    raw = with_change(targets=["synth-scenes", "mine", "ssv2"])
    raw["datasets"]["mine"] = {"type": "folder", "root": str(tmp_path), "csv": "labels.csv"}
    with pytest.raises(ParamsError, match=r"'mine', 'ssv2' reads .* outside the workspace.*set watch: \[mine, ssv2\]"):
        parse_params(raw)
    raw["watch"] = ["mine"]
    with pytest.raises(ParamsError, match=r"'ssv2' reads .*set watch: \[mine, ssv2\]"):
        parse_params(raw)
    raw["watch"] = ["mine", "ssv2", "synth-scenes"]
    with pytest.raises(ParamsError, match=r"'watch\[2\]' is 'synth-scenes', a synthact dataset.*remove it"):
        parse_params(raw)
    raw["watch"] = ["mine", "ssv2", "nope"]
    with pytest.raises(ParamsError, match=r"'watch\[2\]' is 'nope'.*synth-scenes"):
        parse_params(raw)
    raw["watch"] = ["mine", "ssv2"]
    assert parse_params(raw).watch == ("mine", "ssv2")
    raw["targets"] = ["synth-scenes"]  # watched but no longer selected: allowed (a second's check per run)
    assert parse_params(raw).watch == ("mine", "ssv2")


def test_sources_of_a_dataset_are_its_kind_or_its_watched_fingerprint(tmp_path, monkeypatch):
    import json

    from fourtier import paths
    from fourtier.data.sources import fingerprint_text, sources_text

    monkeypatch.chdir(tmp_path)
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text("path,label\nv.mp4,jump\n")
    raw = with_change(targets=["mine"], watch=["mine"])
    raw["datasets"]["mine"] = {"type": "folder", "root": str(tmp_path), "csv": "labels.csv"}
    p = parse_params(raw)
    assert sources_text("synth-scenes", p.dataset("synth-scenes")) == '{\n "kind": "synthact"\n}\n'  # the bytes of old
    with pytest.raises(ParamsError, match=r"'mine' \(folder\).*data/sources/watch/mine.json is missing.*'watch:'"):
        sources_text("mine", p.dataset("mine"))
    paths.watched("mine").parent.mkdir(parents=True)
    paths.watched("mine").write_text(fingerprint_text(p.dataset("mine")))
    fp = json.loads(sources_text("mine", p.dataset("mine")))
    assert fp["kind"] == "folder" and fp["files"] == 1 and fp["files_missing"] == 0


@pytest.mark.parametrize("seconds", [[2.0], [0, 1.0], [3.0, 2.0], "2-4", [True, 2.0]])
def test_synthact_durations_are_a_positive_range(seconds):
    raw = with_change()
    raw["datasets"]["synth-scenes"]["seconds"] = seconds
    with pytest.raises(ParamsError, match=r"datasets.synth-scenes.seconds"):
        parse_params(raw)


@pytest.mark.parametrize("changes, expected", [
    ({"vlm": "gpt-9"}, ["'vlm'", "'gpt-9'", "builtin", "blip2"]),
    ({"backbone": "resnet"}, ["'backbone'", "'resnet'", "tiny", "videomae"]),
    ({"text_encoder": "bert"}, ["'text_encoder'", "'bert'", "minilm"]),
    ({"K": 0}, ["'K'", ">= 1", "0"]),
    ({"K": "five"}, ["'K'", "int", "'five'"]),
    ({"K": True}, ["'K'", "int", "True"]),
    ({"K": 1000}, ["K=1000", "128,000 px", "65,500", "lower K or tile.height"]),
    ({"prompts": ["A", "E"]}, ["'prompts[1]'", "'E'", "A, B, C, D"]),
    ({"prompts": "A"}, ["'prompts'", "list", "'A'"]),
    ({"prompts": ["B", "B"]}, ["'prompts'", "twice"]),
    ({"targets": []}, ["'targets'", "empty", "synth-scenes"]),
    ({"pretrain": ["kinetics"]}, ["'pretrain[0]'", "'kinetics'", "synth-pretrain"]),
    ({"targets": ["synth-pretrain"]}, ["both", "synth-pretrain"]),
])
def test_bad_values_name_key_value_and_allowed(changes, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(with_change(**changes))
    for fragment in expected:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_bad_dataset_specs():
    raw = with_change()
    raw["datasets"]["synth-scenes"]["variant"] = "kinetics"
    with pytest.raises(ParamsError, match=r"datasets.synth-scenes.variant.*'kinetics'.*pretrain, scenes, motion"):
        parse_params(raw)
    raw = with_change()
    raw["datasets"]["synth-scenes"]["type"] = "youtube"
    with pytest.raises(ParamsError, match=r"datasets.synth-scenes.type.*'youtube'.*synthact, folder"):
        parse_params(raw)
    raw = with_change()
    raw["datasets"]["synth-motion"]["train_per_class"] = 0
    with pytest.raises(ParamsError, match=r"datasets.synth-motion.train_per_class.*>= 1"):
        parse_params(raw)
    raw = with_change()
    raw["datasets"]["my.set"] = {"type": "folder", "root": "/x", "csv": "a.csv"}
    with pytest.raises(ParamsError, match="only letters"):
        parse_params(raw)


def test_tile_section_checked():
    raw = with_change()
    raw["tile"]["jpeg_quality"] = 101
    with pytest.raises(ParamsError, match=r"tile.jpeg_quality.*1..100"):
        parse_params(raw)
    raw = with_change()
    del raw["tile"]["height"]
    with pytest.raises(ParamsError, match="missing key 'tile.height'"):
        parse_params(raw)


def test_hf_model_ids_are_accepted_as_selectors():
    assert parse_params(with_change(vlm="hf:org/some-vlm")).vlm == "hf:org/some-vlm"


def section_change(section, **changes):
    raw = with_change()
    raw[section] = {**raw[section], **changes}
    return raw


@pytest.mark.parametrize("section, changes, expected", [
    ("finetune", {"epochs": -1}, ["'finetune.epochs'", ">= 1", "-1"]),
    ("finetune", {"epochs": 0}, ["'finetune.epochs'", ">= 1"]),
    ("finetune", {"lr": "fast"}, ["'finetune.lr'", "number", "'fast'"]),
    ("finetune", {"lr": "1e-3"}, ["'finetune.lr'", "1.0e-3"]),
    ("align", {"lr": 0}, ["'align.lr'", "> 0"]),
    ("finetune", {"arms": ["ftp", "typo"]}, ["'finetune.arms[1]'", "'typo'", "baseline, ftp, random, shuffled"]),
    ("finetune", {"arms": []}, ["'finetune.arms'", "empty", "nothing would be trained"]),
    ("finetune", {"arms": ["ftp", "ftp"]}, ["'finetune.arms'", "twice"]),
    ("finetune", {"seeds": []}, ["'finetune.seeds'", "empty"]),
    ("finetune", {"seeds": [0, "1"]}, ["'finetune.seeds[1]'", "'1'"]),
    ("finetune", {"betas": [0.9]}, ["'finetune.betas'", "two numbers"]),
    ("finetune", {"label_smoothing": 1.0}, ["'finetune.label_smoothing'", "below 1"]),
    ("finetune", {"mixup_prob": 1.5}, ["'finetune.mixup_prob'", "<= 1.0"]),
    ("backbone_train", {"batch_size": 0}, ["'backbone_train.batch_size'", ">= 1"]),
    ("backbone_train", {"epoch": 3}, ["unknown key 'backbone_train.epoch'", "did you mean 'epochs'"]),
    ("finetune", {"mixup": 0.2}, ["unknown key 'finetune.mixup'", "did you mean"]),
    ("features", {"temporal_view": 3}, ["unknown key 'features.temporal_view'", "'temporal_views'"]),
    ("runtime", {"worker": 4}, ["unknown key 'runtime.worker'", "'workers'"]),
    ("runtime", {"nproc_per_node": 0}, ["'runtime.nproc_per_node'", ">= 1"]),
    ("runtime", {"nprocs_per_node": 2}, ["unknown key 'runtime.nprocs_per_node'", "'nproc_per_node'"]),
    ("runtime", {"nnodes": 2}, ["'runtime.nnodes' is above 1", "runtime.rdzv_endpoint", "launcher: srun"]),
    ("runtime", {"rdzv_endpoint": "node1"}, ["'runtime.rdzv_endpoint'", "host:port", "'node1'"]),
    ("runtime", {"launcher": "mpirun"}, ["'runtime.launcher'", "'mpirun'", "torchrun, srun"]),
    ("runtime", {"stage2_parallel": "both"}, ["'runtime.stage2_parallel'", "runs, ddp"]),
    ("runtime", {"timeout_s": 1}, ["'runtime.timeout_s'", ">= 10"]),
    ("align", {"processor": "mlp"}, ["'align.processor'", "'mlp'", "attention, paper"]),
    ("align", {"objective": "token"}, ["'align.objective'", "'token'", "pooled, tokens"]),
    ("backbone_train", {"flips": "no"}, ["'backbone_train.flips'", "'no'"]),
])
def test_training_sections_are_typed_and_checked(section, changes, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(section_change(section, **changes))
    for fragment in expected:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_missing_section_and_misspelt_top_level_key_are_named():
    raw = with_change()
    del raw["align"]
    with pytest.raises(ParamsError, match="missing key 'align'"):
        parse_params(raw)
    raw = with_change()
    raw["finetunes"] = raw.pop("finetune")
    with pytest.raises(ParamsError, match="unknown key 'finetunes'; did you mean 'finetune'"):
        parse_params(raw)
    raw = with_change()
    raw["datasets"]["synth-scenes"]["train_per_clas"] = 3
    with pytest.raises(ParamsError, match="unknown key 'datasets.synth-scenes.train_per_clas'.*'train_per_class'"):
        parse_params(raw)


def test_stage1_variants_and_backbone_augmentations_defaults():
    p = parse_params(with_change())
    assert (p.align.processor, p.align.objective) == ("paper", "pooled")  # the paper's processor (Table 1)
    assert p.backbone_train.flips and p.backbone_train.time_reversal
    p = parse_params(section_change("align", processor="attention", objective="tokens"))
    assert (p.align.processor, p.align.objective) == ("attention", "tokens")


def test_a_selector_takes_a_local_model_folder(tmp_path):
    """vlm, backbone and text_encoder take a local save_pretrained folder as the README says; a path that is
    not a folder is still an unknown preset, with the three forms in the message."""
    p = parse_params(with_change(vlm=str(tmp_path), backbone=str(tmp_path), text_encoder=str(tmp_path)))
    assert (p.vlm, p.backbone, p.text_encoder) == (str(tmp_path),) * 3
    with pytest.raises(ParamsError, match=r"'vlm'.*hf:<model id>, or the path of a local model folder"):
        parse_params(with_change(vlm=str(tmp_path / "missing")))


def test_optim_settings_come_from_their_section():
    p = parse_params(section_change("finetune", lr=2.5e-4, betas=[0.8, 0.99], warmup_epochs=3, seeds=[4, 7]))
    assert p.finetune.optim.lr == 2.5e-4 and p.finetune.optim.betas == (0.8, 0.99)
    assert p.finetune.optim.warmup_epochs == 3 and p.finetune.seeds == (4, 7)
    assert p.align.optim.epochs == DEFAULT["align"]["epochs"] and p.backbone_train.seed == DEFAULT["backbone_train"]["seed"]


def test_every_stage_script_validates_before_it_works(tmp_path):
    """A bad value stops each stage with the params message before it touches data (no traceback)."""
    import subprocess
    import sys

    raw = section_change("finetune", epochs=-1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for stage, args in [("finetune", ["synth-scenes"]), ("align", []), ("tile", ["synth-pretrain"])]:
        done = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *args], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 2, (stage, done.stderr)
        assert "'finetune.epochs' must be >= 1" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()


def test_a_model_selector_means_the_same_in_every_stage(tmp_path):
    """vlm, backbone and text_encoder name a preset, hf:<model id> or a local model folder; params, the VLM and
    text-encoder factories, the backbone stage and `fourtier plan` all read it through resolve_preset."""
    from fourtier.config.base import resolve_preset

    presets = {"tiny": {"type": "tiny", "size": 64}}
    assert resolve_preset("tiny", presets) == {"type": "tiny", "size": 64}
    assert resolve_preset("hf:MCG-NJU/videomae-base", presets) == {"type": "hf", "model": "MCG-NJU/videomae-base"}
    assert resolve_preset(str(tmp_path), presets) == {"type": "hf", "model": str(tmp_path)}
    assert resolve_preset("hf:", presets) is None and resolve_preset("tinny", presets) is None


def test_a_stage_gets_its_groups_and_the_whole_file_is_still_checked():
    """load_params(groups) holds only those sections, but a bad value anywhere stops any stage at once."""
    from fourtier.config.base import parse_params
    from fourtier.config.caption import CaptionGroup
    from fourtier.config.data import DataParams

    params = parse_params(with_change(), DataParams, CaptionGroup)
    assert params.K == 5 and params.dataset("synth-scenes").variant == "scenes"
    with pytest.raises(AttributeError):
        params.finetune  # noqa: B018  (not a section this stage reads)
    with pytest.raises(ParamsError, match="finetune.epochs"):
        parse_params(section_change("finetune", epochs=0), DataParams, CaptionGroup)


def test_each_groups_validators_have_their_own_names():
    """A stage's model inherits every group it reads; a validator named as another group's would replace it
    silently (pydantic keeps one per name), dropping that group's cross-checks."""
    from fourtier.config.base import all_groups

    seen = {}
    for group in all_groups():
        for name in group.__pydantic_decorators__.field_validators | group.__pydantic_decorators__.model_validators:
            if name == "_known_keys":
                continue
            assert name not in seen, f"{group.__name__}.{name} hides {seen[name]}.{name}"
            seen[name] = group.__name__


def test_a_schema_is_a_dep_only_of_the_stages_that_read_its_group():
    """Editing one group's schema re-runs only its stages: tile and caption do not depend on the training
    schema, align does not depend on the caption schema."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = {name: set(stage.get("do", stage)["deps"]) for name, stage in stages.items()}
    assert "src/fourtier/config/train.py" not in deps["tile"] | deps["caption"] | deps["embed"] | deps["features-target"]
    assert "src/fourtier/config/caption.py" not in deps["align"] | deps["finetune"] | deps["features-target"]
    assert "src/fourtier/config/text.py" not in deps["finetune"] | deps["tile"]
