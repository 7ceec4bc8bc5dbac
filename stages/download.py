"""download stage: fetch or generate one dataset into data/raw/<ds> (the contract in fourtier.data.contract)."""
import argparse
import time
from pathlib import Path

from fourtier.data import registry
from fourtier import paths
from fourtier.errors import exits_cleanly
from fourtier.params import load_params


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a name defined under 'datasets:' in params.yaml")
    parser.add_argument("--out", type=Path, help="output folder (default data/raw/<dataset>)")
    args = parser.parse_args()
    params = load_params()
    spec = params.dataset(args.dataset)
    out = args.out or paths.raw(args.dataset)
    start = time.perf_counter()
    manifest = registry.download(spec, out, params.workers)
    print(f"download {args.dataset}: {manifest['num_videos']} videos in {manifest['num_classes']} classes, "
          f"{len(manifest['skipped'])} skipped, {time.perf_counter() - start:.1f} s")
    for item in manifest["skipped"][:10]:
        print(f"  skipped {item['item']}: {item['reason']}")


if __name__ == "__main__":
    main()
