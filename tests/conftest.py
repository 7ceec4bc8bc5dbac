import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# the answer cache of the tests' own runs never mixes with the user's
os.environ["FOURTIER_CACHE"] = tempfile.mkdtemp(prefix="fourtier-test-cache-")
atexit.register(shutil.rmtree, os.environ["FOURTIER_CACHE"], ignore_errors=True)

TESTVIDEOS = Path(os.environ.get("FOURTIER_TESTVIDEOS", Path(__file__).resolve().parents[2] / "shared" / "testvideos"))


@pytest.fixture(scope="session")
def testvideos() -> Path:
    if not (TESTVIDEOS / "MANIFEST.md").exists():
        pytest.skip(f"third-party test clips not found at {TESTVIDEOS} (set FOURTIER_TESTVIDEOS)")
    return TESTVIDEOS


def pytest_collection_modifyitems(items):
    """The end-to-end pipeline file first: it is the longest, so under xdist (pyproject's addopts) the other files
    fill the second worker while it runs instead of after it."""
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_pipeline.py")
