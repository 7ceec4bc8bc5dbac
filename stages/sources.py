"""sources stage: what one dataset's download reads from outside the workspace (data/sources/<ds>.json).

Nothing, for SynthAct and public datasets: the file holds their kind only. For a dataset under `watch:`, a copy
of its fingerprint from the `watch` stage. This stage depends on all watched fingerprints (DVC cannot make a
dep depend on a dataset's kind) but takes about a second, and its output changes only when this dataset's own
fingerprint did, so `download` re-runs for that dataset alone.
"""
import argparse

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.config.data import DataParams
from fourtier.data.sources import sources_text
from fourtier.errors import exits_cleanly


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", help="a name defined under 'datasets:' in params.yaml")
    args = parser.parse_args()
    params = load_params(DataParams)
    text = sources_text(args.dataset, params.dataset(args.dataset))
    out = paths.sources(args.dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
