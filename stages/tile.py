"""tile stage: K keyframes per video, side by side in one JPEG, plus an index (data/tiles/<ds>)."""
import argparse
from pathlib import Path

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.caption import CaptionGroup
from fourtier.config.data import DataParams
from fourtier.config.runtime import RuntimeGroup
from fourtier.errors import exits_cleanly
from fourtier.video.tiling import tile_dataset


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a dataset already downloaded to data/raw/<dataset>")
    parser.add_argument("--raw", type=Path, help="dataset folder (default data/raw/<dataset>)")
    parser.add_argument("--out", type=Path, help="output folder (default data/tiles/<dataset>)")
    args = parser.parse_args()
    params = load_params(DataParams, CaptionGroup, RuntimeGroup)
    params.dataset(args.dataset)
    summary = tile_dataset(args.raw or paths.raw(args.dataset), args.out or paths.tiles(args.dataset),
                           params.K, params.tile, params.workers)
    rate = (summary["tiled"] + summary["skipped"]) / max(summary["seconds"], 1e-9)
    print(f"tile {args.dataset}: {summary['tiled']} tiled, {summary['skipped']} skipped "
          f"(K={params.K}, height {params.tile.height} px, {rate:.1f} clips/s)")
    for item in summary["skipped_videos"][:10]:
        print(f"  skipped {item['video_id']}: {item['reason']}")


if __name__ == "__main__":
    main()
