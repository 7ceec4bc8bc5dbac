#!/bin/bash
# The paper's prompt (Table 7) and K (Table C5) ablations on the default data, kept as committed results:
# the experiments' parameters and metrics (a filtered `dvc exp show --json`) and the tables `fourtier report`
# makes from them, which it can make again from the committed file alone.
#
#   fourtier ablate K && fourtier ablate prompts && dvc queue start -j 1   # queue and run (about 90 minutes)
#   bash analysis/ablations.sh <commit the experiments were queued from> [<another such commit> ...]
#
# Output: analysis/results/ablations/{exp_show.json,report.md}, and analysis/results/ablations/gains.png once
# the baseline group (prompts 1) is among the experiments.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 <commit the experiments were queued from> [<another> ...]" >&2; exit 2; }
revs=()
for rev in "$@"; do revs+=(--rev "$rev"); done
out=analysis/results/ablations
mkdir -p "$out"
dvc exp show --json "${revs[@]}" | python -c '
import json, sys
keep = ("K-", "prompts-")
rows = json.load(sys.stdin)
for entry in rows:  # only the ablations, and of each only its params and evaluation metrics
    for exp_range in entry.get("experiments") or []:
        exp_range["revs"] = [r for r in exp_range.get("revs") or [] if (r.get("name") or "").startswith(keep)]
    entry["experiments"] = [e for e in entry.get("experiments") or [] if e["revs"]]
    for state in [entry] + [r for e in entry["experiments"] for r in e["revs"]]:
        data = state.get("data") or {}
        data.pop("deps", None), data.pop("outs", None)
        data["metrics"] = {k: v for k, v in (data.get("metrics") or {}).items() if k.endswith("metrics.json")}
json.dump(rows, sys.stdout, separators=(",", ":"))
' > "$out/exp_show.json"
fourtier report --json "$out/exp_show.json" --out "$out/report.md" --plot "$out/gains.png"
