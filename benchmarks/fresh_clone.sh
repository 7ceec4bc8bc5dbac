#!/bin/bash
# The README's first command on a fresh clone, timed per stage: clones this repository's HEAD into a scratch
# folder, runs the install part of that command (everything before `&& dvc repro`, read from the README itself),
# then `dvc repro` with an empty answer cache, and writes the per-stage table to
# benchmarks/results/fresh_clone.txt (via benchmarks/stage_durations.py).
#
#     bash benchmarks/fresh_clone.sh [scratch folder, default /tmp/fourtier-fresh]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=${1:-/tmp/fourtier-fresh}
rm -rf "$scratch" && mkdir -p "$scratch"
git clone -q "$repo" "$scratch/clone"
cd "$scratch/clone"
export FOURTIER_CACHE="$scratch/cache"   # no answers cached from earlier runs
unset PYTHONDONTWRITEBYTECODE            # as on a user's machine
start=$(date +%s.%N)
install=$(awk '/^```/{n++; next} n==1{print; exit}' README.md | sed 's/ && dvc repro$//')
case "$install" in *"pip install"*) ;; *) echo "README's first command has no pip install: $install" >&2; exit 2;; esac
echo "install: $install"
eval "$install" > "$scratch/install.log" 2>&1
installed=$(date +%s.%N)
. .venv/bin/activate
dvc repro 2>&1 | while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done > "$scratch/repro.log"
done_at=$(date +%s.%N)
python "$repo/benchmarks/stage_durations.py" "$scratch/repro.log" --install "$start" "$installed" --end "$done_at" \
    --commit "$(git rev-parse --short HEAD)" > "$repo/benchmarks/results/fresh_clone.txt"
# what the run changed among the committed files: only data/timings/ if the lock was reproduced
{ echo "# git status --short after dvc repro (lock reproduced when only data/timings/ is listed):"
  git status --short | sed 's/^/#   /'; } >> "$repo/benchmarks/results/fresh_clone.txt"
cat "$repo/benchmarks/results/fresh_clone.txt"
