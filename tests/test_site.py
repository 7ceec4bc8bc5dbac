"""The docs are true to the repository: the MkDocs site builds with --strict (no missing page, broken link or
anchor), the pipeline diagram is what `dvc dag` prints for the current dvc.yaml, the figures are what
docs/make_figures.py draws from the committed results, and every command and results path that README.md or a
page under docs/ cites exists (docs/development.md, "These docs")."""
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]  # not helpers.REPO: these tests import nothing of fourtier

DOCS = sorted((REPO / "docs").glob("*.md"))
CITING = [REPO / "README.md", *DOCS]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "NO_MKDOCS_2_WARNING": "1"}


def mkdocs_build(config_dir, site_dir):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
                          cwd=config_dir, env=ENV, capture_output=True, text=True)


def test_the_site_builds_strictly_with_every_page_in_the_nav(tmp_path):
    done = mkdocs_build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(re.sub(r"!!python/name:\S+", "''", (REPO / "mkdocs.yml").read_text()))
    in_nav = {next(iter(entry.values())) for entry in config["nav"]}
    assert in_nav == {p.name for p in DOCS}  # every page is in the nav, and the nav names no missing page
    for page in in_nav:
        name = "index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html"
        assert (tmp_path / "site" / name).exists(), page


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    """The strict build is what catches them: a copy of the docs with one bad link, then one bad anchor."""
    for bad in ("[gone](no-such-page.md)", "[gone](results.md#no-such-section)"):
        work = tmp_path / bad.strip("[]()#").replace("/", "_").replace(".", "_")
        shutil.copytree(REPO / "docs", work / "docs")
        shutil.copy(REPO / "mkdocs.yml", work / "mkdocs.yml")
        with open(work / "docs" / "index.md", "a") as fh:
            fh.write(f"\n{bad}\n")
        done = mkdocs_build(work, work / "site")
        assert done.returncode != 0, f"{bad} did not fail the build"


def test_the_pipeline_diagram_is_what_dvc_dag_prints():
    done = subprocess.run([sys.executable, "docs/make_dag.py", "--check"], cwd=REPO, env=ENV, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"run `python docs/make_dag.py`: {done.stdout}{done.stderr}"
    mermaid = subprocess.run([sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=REPO, env=ENV,
                             capture_output=True, text=True, check=True).stdout.strip()
    for path in (REPO / "README.md", REPO / "docs/pipeline.md"):
        assert f"```mermaid\n{mermaid}\n```" in path.read_text(), path


def test_the_figures_are_drawn_from_the_committed_results():
    done = subprocess.run([sys.executable, "docs/make_figures.py", "--check"], cwd=REPO, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"run `python docs/make_figures.py`: {done.stdout}{done.stderr}"


def tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()


def stage_outputs() -> list[str]:
    """Every output path dvc.lock records (they exist after `dvc pull` or `dvc repro`, not in git), and the
    templated outputs of the stages the defaults do not instantiate (cross-dataset: `cross_dataset: []`), their
    ${...} read as any name."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    recorded = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    templated = []
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get("do", stage).get(key, []) or []:
                templated.append(re.sub(r"\$\{[^}]+\}", "*", next(iter(entry)) if isinstance(entry, dict) else entry))
    return recorded + templated


COMMAND = re.compile(r"(?:python3?|bash) ((?:benchmarks|analysis|docs)/[\w./-]+\.(?:py|sh))")
RESULT = re.compile(r"(?<![\w./<>-])((?:benchmarks/results|analysis|data/eval|models)/[\w./<>*@-]*[\w>*])")


def cited(pattern) -> dict[str, set[str]]:
    """path -> the files citing it, for every match of `pattern` in README.md and docs/*.md."""
    found: dict[str, set[str]] = {}
    for path in CITING:
        for match in pattern.finditer(path.read_text()):
            found.setdefault(match.group(1).rstrip("."), set()).add(path.relative_to(REPO).as_posix())
    return found


def exists(path: str, files: list[str], outs: list[str]) -> bool:
    """A tracked file or folder, with `<placeholder>` and `*` matching any name; or a path inside a stage output."""
    glob = re.sub(r"<[^>]+>", "*", path.rstrip("/"))
    for f in files:
        if fnmatch.fnmatch(f, glob) or fnmatch.fnmatch(f, glob + "/*"):
            return True
    parts = glob.split("/")
    for out in outs:  # the path is the output, inside it, or a folder holding it
        depth = len(out.split("/"))
        if fnmatch.fnmatch(out, "/".join(parts[:depth])) or fnmatch.fnmatch(out, glob + "/*"):
            return True
    return False


def test_every_cited_command_and_results_path_exists():
    files, outs = tracked(), stage_outputs()
    commands = cited(COMMAND)
    assert "docs/make_figures.py" in commands and "analysis/headline.py" in commands  # the patterns find them
    missing = {c: sorted(where) for c, where in commands.items() if c not in files}
    assert missing == {}, f"commands cited but not in the repository: {missing}"
    results = cited(RESULT)
    assert "benchmarks/results/fresh_clone.txt" in results and "data/eval/<target>/metrics.json" in results
    missing = {r: sorted(where) for r, where in results.items() if not exists(r, files, outs)}
    assert missing == {}, f"results paths cited but not in the repository: {missing}"


def test_the_docs_cite_nothing_outside_the_repository():
    """No page points into a folder beside the checkout (tests/test_docs.py checks the design notes by name)."""
    for path in CITING:
        assert "../shared" not in path.read_text(), path
