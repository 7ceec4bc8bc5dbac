#!/bin/bash
# Stage 1 as the paper wrote it, and the token-wise objective, each with all four arms on both targets (3 seeds),
# run as DVC experiments in the workspace. Each one's tables are kept under analysis/results/<name>/ (headline
# table and metrics) and analysis/results/swap_discrimination-<name>.txt (what stage 1 learnt of direction).
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
# the reference: what the default run's stage 1 learnt of direction (its outputs are the committed ones)
python analysis/swap_discrimination.py --label default
python analysis/swap_discrimination.py --label default-shuffled --arm shuffled
for name in "${@:-paper-processor tokens-b32 pooled-b32}"; do
  for one in $name; do
    git checkout -- params.yaml dvc.lock  # each variant starts from the committed defaults
    echo "== $one: dvc exp run -n $one ${SETS[$one]}"
    # shellcheck disable=SC2086
    dvc exp run -n "$one" ${SETS[$one]}
    python analysis/headline.py --save "analysis/results/$one"
    python analysis/swap_discrimination.py --label "$one"
    python analysis/swap_discrimination.py --label "$one-shuffled" --arm shuffled
  done
done
git checkout -- params.yaml dvc.lock
dvc checkout -q  # back to the committed default run's outputs
