"""The project stands alone: its code and docs cite the paper or the README, never a design note that is not
in the repository."""
import subprocess

from helpers import REPO


def test_no_tracked_file_cites_a_design_note_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    citing = [f for f in files if f.endswith((".py", ".md", ".yaml", ".toml", ".txt"))
              and "DESIGN.md" in (REPO / f).read_text(errors="replace") and f != "tests/test_docs.py"]
    assert citing == []
