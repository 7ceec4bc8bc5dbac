"""Which outputs a `dvc repro` on this machine reproduced: the outs of a dvc.lock against those of another.

    python benchmarks/lock_diff.py --rev c2e1b90 --lock ../clone/dvc.lock

compares the lock a fresh clone of commit `rev` wrote after its `dvc repro` (here) with the lock committed at
`rev` (made on another machine), output by output, and prints this machine's CPU and the SIMD extensions that
change which kernels a library may pick. Nothing is run; it reads two lock files.
"""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def outs(lock: dict) -> dict[tuple[str, str], str]:
    return {(stage, out["path"]): out.get("md5", "") for stage, body in lock["stages"].items()
            for out in body.get("outs", [])}


def cpu() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split()) if "flags" in text else set()
    simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return f"{model.group(1) if model else platform.processor()}; {' '.join(simd)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the commit whose committed dvc.lock is the reference")
    parser.add_argument("--lock", required=True, type=Path, help="the dvc.lock a repro of that commit wrote here")
    args = parser.parse_args()
    committed = yaml.safe_load(subprocess.run(["git", "show", f"{args.rev}:dvc.lock"], cwd=REPO, check=True,
                                              capture_output=True, text=True).stdout)
    here = yaml.safe_load(args.lock.read_text())
    ref, got = outs(committed), outs(here)
    print(f"cpu: {cpu()}")
    print(f"reference: dvc.lock at {args.rev}; compared: {args.lock}")
    for key in sorted(ref):
        print(f"{'same' if got.get(key) == ref[key] else 'DIFFERENT':9} {key[0]:36} {key[1]}")
    same = sum(got.get(k) == v for k, v in ref.items())
    print(f"{same} of {len(ref)} outputs reproduced, {len(ref) - same} different")


if __name__ == "__main__":
    main()
