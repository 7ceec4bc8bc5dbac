"""What do m and the stage-1 processors encode about each target's classes? A linear probe per representation.

    python analysis/linear_probe.py      (after dvc repro; about 1 minute on 2 cores)
    python analysis/linear_probe.py --out analysis/results/linear_probe-<experiment>.txt   (another run's outputs)

Writes the lines it prints to analysis/results/linear_probe.txt (or --out).

For each target: logistic regression on the training clips, top-1 on the validation clips (view 0), for
  m (frame means, T x D)           the frozen backbone's feature map, pooled over space
  m (full, T x h x w x D)          the whole feature map: where things are, too
  s_i of random/shuffled/ftp       the four processors' spatially pooled outputs (4 x T x D)
  t_i of random/shuffled/ftp       their temporally pooled outputs (4 x N x D): each position over time
If the FTP processors add little over m and the controls, stage 1 has not put the target's distinctions into
v_i, and stage 2 cannot gain from them.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fourtier import paths
from fourtier.config.base import load_params
from fourtier.features.source import FeatureSource
from fourtier.train.finetune import stage2_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("analysis/results/linear_probe.txt"))
    args = parser.parse_args()
    params = load_params()
    torch.set_num_threads(params.workers)
    lines = ["# python analysis/linear_probe.py: validation top-1 of a linear probe per representation (view 0)"]
    for ds in params.targets:
        source = FeatureSource(paths.features(ds))
        train, val = source.split("train"), source.split("val")
        m = source.get(np.arange(len(source)), 0)  # view 0 of every clip (a target set fits in memory)
        representations = {"m (frame means, T x D)": m.mean((2, 3)).flatten(1).numpy(),
                           "m (full, T x h x w x D)": m.flatten(1).numpy()}
        for arm in ("random", "shuffled", "ftp"):
            model = stage2_model(arm, list(params.prompts), source.dim, source.grid, len(source.classes), 0).eval()
            with torch.no_grad():
                outputs = model.processor_outputs(m)
            representations[f"s_i of {arm} processors"] = torch.cat([s.flatten(1) for s, _ in outputs.values()], 1).numpy()
            representations[f"t_i of {arm} processors"] = torch.cat([t.flatten(1) for _, t in outputs.values()], 1).numpy()
        for name, x in representations.items():
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
            probe.fit(x[train], source.labels[train])
            lines.append(f"{ds:14s} {name:30s} linear probe top-1 {100 * probe.score(x[val], source.labels[val]):.1f}%")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
