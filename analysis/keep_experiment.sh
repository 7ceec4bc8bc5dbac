#!/bin/bash
# Keep the tables of a finished queued experiment (`dvc exp run --queue -n NAME ...`, then `dvc queue start`)
# under analysis/results/NAME/ (headline table and metrics, stage 1's retrieval, the backbone's metrics, the
# stages' summary lines) and analysis/results/compare-REFERENCE-NAME.md (paired by seed against a kept run).
# With --probes, also the linear probes, the stage-2 linear head and stage 1's swap discrimination of that run
# (about 8 minutes on 2 cores).
#
#   bash analysis/keep_experiment.sh backbone-noaug default --probes
#   bash analysis/keep_experiment.sh paper-seeds-0-4 seeds-0-4
#
# Only the experiment's params, lock and outputs are taken into the workspace (`git checkout <its ref> -- ...`,
# then `dvc checkout`), never its code: `dvc exp apply` of an experiment queued from an older commit would also
# put that commit's source files back. Run it on a committed workspace: it restores the committed outputs at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: $0 <experiment name> <reference folder under analysis/results> [--probes]}
reference=${2:?usage: $0 <experiment name> <reference folder under analysis/results> [--probes]}
probes=${3:-}
ref=$(git for-each-ref --format='%(refname)' refs/exps | grep "/$name\$" | head -1)
[ -n "$ref" ] || { echo "no finished experiment named $name (dvc exp show lists them)" >&2; exit 2; }
kept="dvc.lock params.yaml models/backbone data/eval models/align_metrics.json"
restore() {
  # shellcheck disable=SC2086
  git checkout HEAD -- $kept
  dvc checkout -q
}
trap restore EXIT
# shellcheck disable=SC2086
git checkout "$ref" -- $kept
dvc checkout -q
out=analysis/results/$name
python analysis/headline.py --save "$out"
cp models/align_metrics.json "$out/align_metrics.json"
cp models/backbone/metrics.json "$out/backbone_metrics.json"
# the stages' one-line summaries (stage 1 retrieval and time per arm, stage 2 top-1 per target)
dvc queue logs "$name" | grep -aoE "align (ftp|shuffled): [^[]*\[[0-9]+ s\]|evaluate synth-[a-z]+: top-1 [a-z0-9 .+,-]*" \
  > "$out/summary.txt" || true
python analysis/compare_runs.py "analysis/results/$reference" "$out"
if [ "$probes" = "--probes" ]; then
  python analysis/linear_probe.py --out "analysis/results/linear_probe-$name.txt"
  python analysis/stage2_heads.py --out "analysis/results/stage2_heads-$name.md"
  python analysis/swap_discrimination.py --label "$name"
fi
