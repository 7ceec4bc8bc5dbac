"""Download a dataset of any kind: the spec names its module (fourtier.config.data, `downloader`).

Adding a dataset kind is one module here with `download(spec, out_dir, workers) -> manifest` that writes the
contract of fourtier.data.contract, and its spec class in fourtier.config.data. A kind that fetches many
archives also takes `parallel` (download.parallel: archives fetched and unpacked at once) and says so in its
spec (`parallel_archives`); a kind that reads files from outside the workspace (`reads_outside`) also gives
`watched(spec)`, the fingerprint of what it reads (fourtier.data.sources).
"""
from __future__ import annotations

import importlib
from pathlib import Path


def module_of(spec):
    """The module under fourtier/data/ that downloads this spec's kind."""
    return importlib.import_module(spec.downloader)


def download(spec, out_dir: Path, workers: int, parallel: int = 1) -> dict:
    """workers: processes for the per-clip work; parallel: archives fetched and unpacked at once."""
    if spec.parallel_archives:
        return module_of(spec).download(spec, out_dir, workers, parallel=parallel)
    return module_of(spec).download(spec, out_dir, workers)
