"""The package is laid out by phase of the pipeline, and the documented layout is the tree as it is."""
import ast
import re

from helpers import REPO

PACKAGE = REPO / "src" / "fourtier"


def fenced_blocks(text: str) -> list[str]:
    blocks, current = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def layout_block() -> str:
    """The fenced block of the docs that describes the layout (README.md or a page under docs/)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))] if (REPO / "docs").exists() else \
        [REPO / "README.md"]
    for page in pages:
        for block in fenced_blocks(page.read_text()):
            if "src/fourtier/" in block and "stages/" in block:
                return block
    raise AssertionError("no page of the docs has the layout block (stages/, src/fourtier/, ...)")


def test_at_most_eight_modules_at_the_top_and_every_package_says_what_it_owns():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 8, top
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(REPO)} needs a docstring that says what it owns"


def test_the_documented_layout_names_every_package_and_module():
    block = layout_block()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) > 1 and not re.search(rf"^\s+{rel.parts[0]}/", block, re.M):
            missing.append(f"{rel.parts[0]}/")
        if not re.search(rf"\b{path.stem}\b", block):
            missing.append(str(rel))
    assert not missing, f"the layout section omits {sorted(set(missing))}"
    # and names nothing that is gone
    for name in re.findall(r"\b(\w+)\.py\b", block):
        assert list(REPO.glob(f"**/{name}.py")), f"the layout section names {name}.py, which does not exist"
