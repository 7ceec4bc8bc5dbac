"""download stage: fetch or generate one dataset into data/raw/<ds> (the contract in fourtier.data.contract).

The work goes into data/raw/.partial/<ds>, which DVC does not delete before the stage runs: a killed ingest
resumes there (clip by clip for folder and public datasets). Above download.shard_above clips the videos are
then packed into zip shards, and the finished folder replaces data/raw/<ds> in one rename.
"""
import argparse
import json
import os
import shutil
import time
from pathlib import Path

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.data import registry
from fourtier.data.contract import pack_videos, prune_videos
from fourtier.errors import exits_cleanly


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a name defined under 'datasets:' in params.yaml")
    parser.add_argument("--out", type=Path, help="output folder (default data/raw/<dataset>)")
    args = parser.parse_args()
    params = load_params(DataParams, RuntimeGroup)
    spec = params.dataset(args.dataset)
    out = args.out or paths.raw(args.dataset)
    work = out.parent / ".partial" / out.name  # keeps the dataset's name, which the manifest records
    # what a resumed run must share with the killed one; other leftovers are started afresh
    key = json.dumps({"dataset": params.raw["datasets"][args.dataset], "shard_above": params.download.shard_above,
                      "shard_size": params.download.shard_size}, sort_keys=True)
    key_file = work.parent / f"{out.name}.key"
    if work.exists() and (not key_file.exists() or key_file.read_text() != key):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    start = time.perf_counter()
    manifest = registry.download(spec, work, params.workers, parallel=params.download.parallel)
    del manifest["checksums"]  # one per clip: not held while the videos are packed
    prune_videos(work)  # files a killed run of other inputs left
    shards = pack_videos(work, params.download.shard_above, params.download.shard_size)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    key_file.unlink()
    print(f"download {args.dataset}: {manifest['num_videos']} videos in {manifest['num_classes']} classes, "
          f"{len(manifest['skipped'])} skipped" + (f", in {shards} shards" if shards else "") +
          f", {time.perf_counter() - start:.1f} s")
    for item in manifest["skipped"][:10]:
        print(f"  skipped {item['item']}: {item['reason']}")


if __name__ == "__main__":
    main()
