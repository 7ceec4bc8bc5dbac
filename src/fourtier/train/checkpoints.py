"""Resumable state of the training stages (align, finetune): where it lives, and how it is written.

A run's checkpoints sit in a directory named after everything that shapes the run (`run_directory`), under
`runtime.checkpoint_dir` ("" = the cache dir, ~/.cache/fourtier/checkpoints). Every rank of every node must
read the same directory: with several processes, rank 0 writes a token there and every rank checks that it
sees it before any work, so a directory that is not shared fails at once with the fix, instead of a resume that
waits on a checkpoint only one node has. Only rank 0 writes a checkpoint; the others wait on a barrier.
"""
from __future__ import annotations

import hashlib
import json
import socket
import uuid
from pathlib import Path

import torch

from fourtier import paths
from fourtier.errors import FourtierError
from fourtier.runtime import distributed


def base_directory(setting: str) -> Path:
    return Path(setting).expanduser() if setting else paths.cache_dir() / "checkpoints"


def run_directory(setting: str, stage: str, key_parts) -> Path:
    """The checkpoint directory of a stage's run, keyed by key_parts (JSON), created and checked shared."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    directory = base_directory(setting) / f"{stage}-{key}"
    if distributed.is_main():
        directory.mkdir(parents=True, exist_ok=True)
    check_shared(directory)
    return directory


def check_shared(directory: Path) -> None:
    """Every rank sees what rank 0 wrote into directory, or every rank stops with a message naming those
    that do not."""
    if distributed.world() == 1:
        directory.mkdir(parents=True, exist_ok=True)
        return
    token = distributed.broadcast_object(uuid.uuid4().hex if distributed.is_main() else None)
    probe = directory / f".shared-{token}"
    if distributed.is_main():
        probe.write_text(token)
    distributed.barrier()
    try:
        seen = probe.read_text() == token
    except OSError:
        seen = False
    blind = [f"rank {r} on {host}" for r, (ok, host) in enumerate(distributed.gather_objects((seen, socket.gethostname())))
             if not ok]
    distributed.barrier()
    if distributed.is_main():
        probe.unlink()
    if blind:
        raise FourtierError(f"the checkpoint directory {directory} is not shared: {', '.join(blind)} cannot see what "
                            "rank 0 wrote there. Set runtime.checkpoint_dir in params.yaml to a directory that every "
                            "node mounts at the same path (e.g. in the workspace or on the cluster's shared "
                            "filesystem)")


def save(state: dict, path: Path) -> None:
    """Rank 0 writes state atomically (a crash never leaves half a checkpoint); every rank waits for it."""
    if distributed.is_main():
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
    distributed.barrier()


def load(path: Path, device: torch.device) -> dict | None:
    """The checkpoint at path (tensors and numbers only), or None when there is none."""
    if not path.exists():
        return None
    return torch.load(path, weights_only=True, map_location=device)
