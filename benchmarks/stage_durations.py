"""Per-stage wall time from a `dvc repro` log whose lines carry a leading Unix timestamp (benchmarks/fresh_clone.sh):
each stage runs from its "Running stage" line to the next one (or to the end of the run)."""
import argparse
import re
from collections import OrderedDict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("log")
    parser.add_argument("--install", nargs=2, type=float, metavar=("START", "END"), required=True)
    parser.add_argument("--end", type=float, required=True)
    parser.add_argument("--commit", default="")
    args = parser.parse_args()
    starts = []
    with open(args.log, errors="replace") as fh:
        for line in fh:
            m = re.match(r"^(\d+\.\d+) Running stage '([^']+)'", line)
            if m:
                starts.append((m.group(2), float(m.group(1))))
    repro_start = starts[0][1] if starts else args.end
    ends = [t for _, t in starts[1:]] + [args.end]
    by_stage: "OrderedDict[str, float]" = OrderedDict()
    for (name, t0), t1 in zip(starts, ends):
        group = name.split("@")[0].replace("-pretrain", "").replace("-target", "")
        by_stage[group] = by_stage.get(group, 0.0) + t1 - t0
    install = args.install[1] - args.install[0]
    print(f"# benchmarks/fresh_clone.sh at commit {args.commit}: git clone, then the README's first command "
          f"(2 CPU cores, empty answer cache)")
    print(f"{'install (venv + pip)':32s} {install:7.0f} s")
    for group, seconds in by_stage.items():
        print(f"{group:32s} {seconds:7.0f} s")
    print(f"{'dvc repro, all stages':32s} {args.end - repro_start:7.0f} s")
    print(f"{'total (install + dvc repro)':32s} {args.end - args.install[0]:7.0f} s")


if __name__ == "__main__":
    main()
