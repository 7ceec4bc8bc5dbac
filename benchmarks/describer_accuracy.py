"""The builtin describer against SynthAct's generator metadata (attributes.csv, which the describer never reads).

    python benchmarks/describer_accuracy.py [--tiles 600]   (after dvc repro; about a minute on 2 cores)

On `--tiles` pretraining tiles of the workspace's K (drawn at random, seed 0), fourtier.caption.perception analyses
each tile as the describer does, and its facts are compared with what the generator drew:
  scene        the background's scene
  colour       the main actor's colour (the describer's first track)
  shape        the main actor's shape
  motion       the main actor's motion (with left/right for slides), on single-object clips
  interaction  approaches / pushes, on the two-object clips
Writes benchmarks/results/describer_accuracy.txt.
"""
import argparse
import csv
import time
from pathlib import Path

import numpy as np

from fourtier import paths
from fourtier.caption.perception import analyse_tile
from fourtier.config.base import load_params
from fourtier.video.tiling import load_tile, read_tile_index

# SynthAct's action -> the describer's (motion, direction)
MOTION = {"slide left": ("moves", "left"), "slide right": ("moves", "right"), "zigzag": ("zigzags", ""),
          "rise": ("rises", ""), "fall": ("falls", ""), "bounce": ("bounces", ""), "jump": ("jumps", ""),
          "grow": ("grows", ""), "shrink": ("shrinks", ""), "spin": ("spins", ""), "orbit": ("moves in a circle", ""),
          "stay still": ("stays still", "")}
INTERACTION = {"approach": "approaches", "push": "pushes"}
OUT = Path("benchmarks/results/describer_accuracy.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=600)
    args = parser.parse_args()
    params = load_params()
    corpus = params.pretrain[0]
    tile_dir = paths.tiles(corpus)
    with open(paths.raw(corpus) / "attributes.csv", newline="") as fh:
        truth = {r["video_id"]: r for r in csv.DictReader(fh)}
    index = [r for r in read_tile_index(tile_dir) if r["status"] == "ok"]
    rng = np.random.default_rng(0)
    chosen = [index[i] for i in sorted(rng.choice(len(index), min(args.tiles, len(index)), replace=False))]
    hits = {k: [] for k in ("scene", "colour", "shape", "motion", "interaction")}
    seconds = 0.0
    for row in chosen:
        tile = load_tile(tile_dir, row["location"])
        start = time.perf_counter()
        facts = analyse_tile(tile, params.K)
        seconds += time.perf_counter() - start
        spec = truth[row["video_id"]]
        actor = facts.tracks[0] if facts.tracks else None
        hits["scene"].append(facts.background.scene == spec["scene"])
        hits["colour"].append(actor is not None and actor.first.colour == spec["colour"])
        hits["shape"].append(actor is not None and actor.first.shape == spec["shape"])
        if spec["action"] in INTERACTION:
            hits["interaction"].append(facts.interaction == INTERACTION[spec["action"]])
        else:
            motion, direction = MOTION[spec["action"]]  # the direction is named for slides only
            hits["motion"].append(actor is not None and actor.motion == motion and direction in ("", actor.direction))
    lines = [f"# python benchmarks/describer_accuracy.py --tiles {args.tiles}: {len(chosen)} tiles of {corpus} at "
             f"K={params.K}, {1000 * seconds / len(chosen):.0f} ms of analysis per tile",
             "| " + " | ".join(hits) + " |", "|---" * len(hits) + "|",
             "| " + " | ".join(f"{np.mean(h):.1%} (n={len(h)})" for h in hits.values()) + " |"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    OUT.write_text(text)


if __name__ == "__main__":
    main()
