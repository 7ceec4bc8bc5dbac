"""watch stage: fingerprint the files a `watch:` dataset reads from outside the workspace (data/sources/watch/<ds>.json).

Always run by `dvc repro` (about a second), for the datasets listed under `watch:` only: its output changes
only when the label CSV or a listed video changed. See fourtier.data.sources.
"""
import argparse

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.data.sources import fingerprint_text
from fourtier.errors import exits_cleanly


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a name listed under 'watch:' in params.yaml")
    args = parser.parse_args()
    spec = load_params(DataParams).dataset(args.dataset)
    out = paths.watched(args.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(fingerprint_text(spec))


if __name__ == "__main__":
    main()
