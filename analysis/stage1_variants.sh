#!/bin/bash
# Stage 1 as the paper wrote it, and the token-wise objective, each with all four arms on both targets (3 seeds),
# run as DVC experiments in the workspace. Each one's tables are kept under analysis/results/<name>/ (headline
# table and metrics, stage 1's retrieval, the stages' summary lines), analysis/results/compare-default-<name>.md
# (paired by seed against the default run) and analysis/results/swap_discrimination-<name>.txt (what stage 1
# learnt of direction). Run it on a committed workspace: it restores the committed outputs at the end.
#
#   bash analysis/stage1_variants.sh [name ...]     (default: all three; about 45 minutes on 2 cores)
#
#   paper-processor  align.processor=paper: average pooling + a linear projection (Table 1), pooled objective
#   tokens-b32       align.objective=tokens on whole answers (embed.max_tokens=160), batch 32: the token-wise
#                    score costs batch^2 x answer tokens, so 128 clips a batch would take an hour per arm here
#   pooled-b32       the default pooled objective at the same batch 32: the control for tokens-b32
# The default run (attention processor, pooled objective, batch 128) is the reference: data/eval.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A SETS=(
  [paper-processor]="-S align.processor=paper"
  [tokens-b32]="-S align.objective=tokens -S embed.max_tokens=160 -S align.batch_size=32"
  [pooled-b32]="-S align.batch_size=32"
)
# the reference: the default run's tables and what its stage 1 learnt of direction (the committed outputs)
python analysis/headline.py --save analysis/results/default
python analysis/swap_discrimination.py --label default
python analysis/swap_discrimination.py --label default-shuffled --arm shuffled
for name in "${@:-paper-processor tokens-b32 pooled-b32}"; do
  for one in $name; do
    git checkout -- params.yaml dvc.lock  # each variant starts from the committed defaults
    echo "== $one: dvc exp run -n $one ${SETS[$one]}"
    # shellcheck disable=SC2086
    dvc exp run -n "$one" ${SETS[$one]} 2>&1 | tee "/tmp/$one.log"
    python analysis/headline.py --save "analysis/results/$one"
    cp models/align_metrics.json "analysis/results/$one/align_metrics.json"
    # the stages' one-line summaries (stage 1 retrieval and time per arm, stage 2 top-1 per target)
    grep -aoE "align (ftp|shuffled): [^[]*\[[0-9]+ s\]|evaluate synth-[a-z]+: top-1 [a-z0-9 .+,-]*" "/tmp/$one.log" \
      > "analysis/results/$one/summary.txt"
    python analysis/compare_runs.py analysis/results/default "analysis/results/$one"
    python analysis/swap_discrimination.py --label "$one"
    python analysis/swap_discrimination.py --label "$one-shuffled" --arm shuffled
  done
done
git checkout -- params.yaml dvc.lock data/eval models/align_metrics.json dvclive
dvc checkout -q  # back to the committed default run's outputs
