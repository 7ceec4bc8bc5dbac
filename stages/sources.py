"""sources stage: fingerprint what a dataset's download reads from outside the workspace (data/sources/<ds>.json).

Always run by `dvc repro` (it takes about a second); its output changes only when the label CSV or a listed
video changed, and only then does `download` re-run. See fourtier.data.sources.
"""
import argparse
import json

from fourtier import paths
from fourtier.data.sources import fingerprint
from fourtier.errors import exits_cleanly
from fourtier.params import load_params


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a name defined under 'datasets:' in params.yaml")
    args = parser.parse_args()
    params = load_params()
    spec = params.dataset(args.dataset)
    out = paths.sources(args.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fingerprint(spec), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
