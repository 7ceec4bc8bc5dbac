"""The pipeline's picture, from `dvc dag --mermaid`: writes DVC's own Mermaid text for the current dvc.yaml and
params.yaml between the `dvc dag` markers of README.md and docs/pipeline.md, so the diagram is never drawn by hand.

    python docs/make_dag.py            # rewrite the two diagrams
    python docs/make_dag.py --check    # exit 1 if a committed diagram differs from what `dvc dag` prints now

tests/test_site.py runs the check.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILES = ("README.md", "docs/pipeline.md")
BEGIN = "<!-- dvc dag: begin (python docs/make_dag.py writes this block) -->"
END = "<!-- dvc dag: end -->"
BLOCK = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.S)


def dvc_dag() -> str:
    """What `dvc dag --mermaid` prints for the repository's dvc.yaml, without trailing blank lines."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    return out.rstrip("\n")


def block(mermaid: str) -> str:
    return f"```mermaid\n{mermaid}\n```\n"


def committed(path: Path) -> str | None:
    """The Mermaid text between the markers of `path` (None when the markers are missing)."""
    found = BLOCK.search(path.read_text())
    if not found:
        return None
    body = found.group(1)
    fenced = re.fullmatch(r"```mermaid\n(.*)\n```\n", body, re.S)
    return fenced.group(1) if fenced else body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args()
    mermaid = dvc_dag()
    stale = []
    for name in FILES:
        path = REPO / name
        text = path.read_text()
        if not BLOCK.search(text):
            raise SystemExit(f"{name} has no `dvc dag` markers ({BEGIN} ... {END})")
        if committed(path) == mermaid:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(BLOCK.sub(lambda _: f"{BEGIN}\n{block(mermaid)}{END}", text))
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
