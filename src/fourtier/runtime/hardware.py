"""Where the work runs: `runtime.device` (auto | cpu | cuda) and the number of data-loading processes.

One setting serves every stage that runs a network (features, embed, align, finetune, evaluate), the
`fourtier predict` command and the hf VLM backend. On CUDA the frozen networks (the visual backbone, the
text encoder) run under bf16 autocast; what they produce is stored as float16 either way. Trained modules
run in float32 everywhere. Under torchrun each process takes the GPU of its LOCAL_RANK.

Importing this module also fixes the CPU kernels (below), so every module that runs a network imports it.
"""
from __future__ import annotations

import contextlib
import os
import platform

import torch

from fourtier.errors import ParamsError
from fourtier.runtime import heap  # noqa: F401  (importing it fixes glibc's mmap threshold: fourtier.runtime.heap)

DEVICES = ("auto", "cpu", "cuda")

# The same CPU kernels on every x86-64 machine, so that a dvc.lock made on one machine is reproduced byte for
# byte on another: MKL's conditional numerical reproducibility, ATen's and oneDNN's instruction set, all at AVX2
# (what every supported x86-64 CPU has; one with AVX-512 would otherwise take other kernels and round
# differently). The libraries read these when they first compute, so setting them on import is in time. A value
# already in the environment wins; GPU kernels are not affected.
if platform.machine().lower() in ("x86_64", "amd64"):
    for _name, _value in (("MKL_CBWR", "AVX2"), ("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")):
        os.environ.setdefault(_name, _value)

def resolve_device(setting: str = "auto") -> torch.device:
    if setting not in DEVICES:
        raise ParamsError(f"params.yaml: 'runtime.device' must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ParamsError("params.yaml: 'runtime.device' is cuda but torch sees no GPU (torch "
                          f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); install a CUDA build of "
                          "torch (see the README) or set runtime.device: auto")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def frozen_autocast(device: torch.device):
    """bf16 autocast for the frozen networks on a GPU; nothing on the CPU (CPU bf16 is slower and changes m)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loader_workers(setting, device: torch.device) -> int:
    """Data-loading processes for the training and evaluation loaders: `auto` is none on the CPU (the reads are
    cheap next to a CPU step and each worker costs a process start) and up to 8 next to a GPU."""
    if setting == "auto":
        return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    return int(setting)
