"""features stage: the frozen backbone's feature map m per clip and view, float16, streamed to shards
(data/features/<ds>); resumes after a kill. With features.cache: false, only the index of readable clips.
With runtime.nproc_per_node x nnodes above 1 it runs under torchrun, each rank its share of the batches
(the same bytes as one process on the CPU)."""
import argparse
import time

import torch

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.config.model import ModelGroup
from fourtier.config.runtime import RuntimeGroup
from fourtier.errors import exits_cleanly
from fourtier.features.cache import compute_features
from fourtier.models.backbone import load_backbone
from fourtier.runtime import distributed
from fourtier.runtime.hardware import resolve_device
from fourtier.runtime.launch import relaunch, threads_per_process


@exits_cleanly
@distributed.names_rank
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    args = parser.parse_args()
    params = load_params(DataParams, ModelGroup, RuntimeGroup)
    params.dataset(args.dataset)
    relaunch(params.runtime, f"features {args.dataset}")
    threads = threads_per_process(params.workers)
    torch.set_num_threads(threads)
    cfg = params.features
    device = resolve_device(params.runtime.device)
    distributed.setup(device, params.runtime.timeout_s)
    backbone = load_backbone(paths.BACKBONE)
    start = time.perf_counter()
    meta = compute_features(backbone, paths.raw(args.dataset), paths.features(args.dataset),
                            cfg.temporal_views, cfg.spatial_views, cfg.batch_size, threads, device,
                            cfg.shard_mb, cfg.cache)
    distributed.teardown()
    if meta is None:  # another rank than 0: rank 0 wrote the index and reports
        return
    n, v = meta["shape"][:2]
    seconds = time.perf_counter() - start
    print(f"features {args.dataset}: {n} clips x {v} views, m {meta['shape'][2:]} float16 on {device}"
          f"{'' if cfg.cache else ' (not cached: computed when needed)'}, {len(meta['skipped'])} skipped, "
          f"{seconds:.0f} s ({n / seconds:.1f} clips/s{f' on {params.runtime.world} processes' if params.runtime.world > 1 else ''})")


if __name__ == "__main__":
    main()
