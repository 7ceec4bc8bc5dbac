"""The README's two commands, CI and the fresh-clone benchmark install the same way, and every dependency is pinned
(constraints.txt), since the pipeline's bytes depend on the exact versions (README, "What `dvc repro` runs")."""
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import REPO


def readme_commands() -> list[str]:
    block = re.search(r"```\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return block.strip().splitlines()


def test_ci_and_the_benchmark_run_the_readme_commands():
    setup, tests = readme_commands()
    install, _, main_job = setup.rpartition(" && ")
    assert main_job == "dvc repro" and "pip install" in install and "-c constraints.txt" in install
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == tests  # the same test command
    pip_line = next(line for line in ci if "pip install" in line)
    assert pip_line.replace(" --quiet", "") in install  # the same install, quieter
    # the benchmark reads the install from the README itself, so the two cannot drift apart
    assert "README.md" in (REPO / "benchmarks/fresh_clone.sh").read_text()


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


def test_every_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pinned = pins()
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req.name}=={pinned[name]} is outside {req.specifier}"
    # the CPU wheel's local label must not be pinned: a CUDA build of the same version has to satisfy it
    assert pinned["torch"] == "2.13.0"


def test_cpu_kernels_are_the_same_on_every_x86_machine():
    """Importing fourtier.runtime.hardware (every module that runs a network does) fixes MKL's, ATen's and oneDNN's instruction set at AVX2 (unless the environment says
    otherwise), so a CPU with AVX-512 computes the committed lock's bytes too."""
    import platform
    import subprocess
    import sys

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    code = ("import torch, fourtier.runtime.hardware, os; torch.randn(4).exp(); "
            "print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'], os.environ['ONEDNN_MAX_CPU_ISA'])")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AVX2", "AVX2", "AVX2"]


def test_tsne_is_the_same_whatever_the_thread_count():
    import numpy as np
    from threadpoolctl import threadpool_limits

    from fourtier.evaluation.plots import tsne_2d

    x = np.random.default_rng(0).normal(size=(120, 16)).astype(np.float32)
    with threadpool_limits(2):
        a = tsne_2d(x)
    with threadpool_limits(1):
        b = tsne_2d(x)
    assert np.array_equal(a, b)
