"""Dataset kinds and their `download` functions.

Adding a public dataset is one module with `download(spec, out_dir, workers) -> manifest` that writes
the contract of fourtier.data.contract, one entry here, and its spec type in fourtier.params. A kind that
fetches many archives also takes `parallel` (download.parallel: archives fetched and unpacked at once) and is
listed in PARALLEL_ARCHIVES.
"""
from __future__ import annotations

from pathlib import Path

from fourtier.data import folder, kinetics, public, ssv2, synthact

DOWNLOADERS = {
    "synthact": synthact.download,
    "folder": folder.download,
    "ucf101": public.download,
    "hmdb51": public.download,
    "kinetics": kinetics.download,
    "k710": kinetics.download,
    "ssv2": ssv2.download,
}

PARALLEL_ARCHIVES = {"kinetics", "k710"}


def download(spec, out_dir: Path, workers: int, parallel: int = 1) -> dict:
    """workers: processes for the per-clip work; parallel: archives fetched and unpacked at once."""
    if spec.kind in PARALLEL_ARCHIVES:
        return DOWNLOADERS[spec.kind](spec, out_dir, workers, parallel=parallel)
    return DOWNLOADERS[spec.kind](spec, out_dir, workers)
