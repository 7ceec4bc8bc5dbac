"""dvc.yaml against the code: every module a stage runs is one of its deps (so `dvc status` cannot say "up
to date" over stale outputs), and every artifact path is the one fourtier.paths gives (so they cannot drift)."""
import ast
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fourtier import paths
from helpers import REPO

SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
ITEM, CORPUS = "some-dataset", "synth-pretrain"
CROSS = ("train-dataset", "test-dataset", "maps/some.csv")  # a cross_dataset entry: train, test, class_map


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def imported_names(path: Path):
    """Every module an import statement in `path` names, at any depth (inside functions too)."""
    package = list(path.relative_to(SRC).parent.parts) if path.is_relative_to(SRC) else []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(package[:len(package) - node.level + 1] + ([module] if module else []))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`


def closure(script: Path) -> set[Path]:
    """The project's files that running `script` may execute: its imports, theirs, and their packages."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            if name.split(".")[0] != "fourtier":
                continue
            parts = name.split(".")
            todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i]))) and f not in seen]
    return seen


def inert(path: Path) -> bool:
    """A package __init__ with nothing but a docstring and __version__ cannot change a stage's output."""
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) or
               isinstance(n, ast.Assign) and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["__version__"]
               for n in body)


def stage_entries(stage: dict, key: str) -> list[str]:
    body = stage.get("do", stage)
    out = []
    for entry in body.get(key, []) or []:
        name = next(iter(entry)) if isinstance(entry, dict) else entry
        for key, value in zip(("train", "test", "class_map"), CROSS):
            name = name.replace(f"${{item.{key}}}", value)
        out.append(name.replace("${item}", ITEM).replace("${pretrain[0]}", CORPUS))
    return out


def script_of(stage: dict) -> Path:
    return REPO / re.search(r"python (stages/\S+\.py)", stage.get("do", stage)["cmd"]).group(1)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_module_a_stage_runs_is_a_dep(name):
    deps = stage_entries(STAGES[name], "deps")
    code_deps = [REPO / d for d in deps if d.startswith(("src/", "stages/"))]
    for dep in code_deps:
        assert dep.exists(), f"{name}: dep {dep.relative_to(REPO)} does not exist"
    uncovered = sorted(str(f.relative_to(REPO)) for f in closure(script_of(STAGES[name]))
                       if not inert(f) and not any(f == d or d in f.parents for d in code_deps))
    assert not uncovered, f"dvc.yaml stage {name!r} runs code it does not declare as deps: {uncovered}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_code_dep_is_run_by_the_stage(name):
    """The other direction: a module file a stage declares but never imports would re-run it for nothing."""
    deps = [d for d in stage_entries(STAGES[name], "deps") if d.startswith(("src/", "stages/")) and d.endswith(".py")]
    ran = {str(f.relative_to(REPO)) for f in closure(script_of(STAGES[name]))}
    assert sorted(set(deps) - ran) == [], f"dvc.yaml stage {name!r} declares code it never runs"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_artifact_paths_are_those_of_the_paths_module(name):
    data_deps = {d for d in stage_entries(STAGES[name], "deps") if not d.startswith(("src/", "stages/"))}
    outs = set()
    for key in ("outs", "metrics", "plots"):
        outs |= set(stage_entries(STAGES[name], key))
    assert (data_deps, outs) == paths.stage_io(name, CROSS if name == "cross-dataset" else ITEM, CORPUS)


def test_the_closure_sees_imports_inside_functions(tmp_path):
    """The checker itself: a function-level import of a module is part of the closure."""
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from fourtier.data.synthact import download\n")
    assert SRC / "fourtier/data/synthact.py" in closure(script)
    assert SRC / "fourtier/video/media.py" in closure(script)  # synthact imports it inside a function too


def test_bytecode_is_not_hashed_with_the_code():
    """Running Python writes __pycache__ into code folders that are deps (src/fourtier/data); DVC must
    ignore it, or importing the package on another machine would make those stages look changed."""
    ignored = (REPO / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored


def test_the_declared_plots_render_with_their_data():
    """`dvc plots show` (DVC's own renderer) fills the few-shot template (.dvc/plots/fewshot.json) and the
    per-class template with the committed CSVs, row for row, and leaves no template anchor unfilled."""
    targets = ["analysis/results/fewshot/fewshot.csv", "data/eval/synth-scenes/per_class.csv"]
    dvc = Path(sys.executable).with_name("dvc")
    done = subprocess.run([str(dvc), "plots", "show", "--json", *targets], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout)["data"]
    # the top-level plot by its definition's id (a target path also gets the raw file, default template)
    for key, target in zip(["dvc.yaml::" + targets[0], targets[1]], targets):
        (plot,) = shown[key]
        assert "<DVC_METRIC" not in json.dumps(plot["content"]), f"{target}: an anchor of its template is unfilled"
        with open(REPO / target, newline="") as fh:
            rows = list(csv.DictReader(fh))
        values = plot["content"]["data"]["values"]
        assert [{k: v[k] for k in rows[0]} for v in values] == rows
