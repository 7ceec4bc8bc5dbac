#!/bin/bash
# Does another CPU compute the committed lock's bytes? Re-runs the stages that make the data (SynthAct videos,
# tiles, the builtin VLM's captions) and one target's features, forced, with this machine posing as a CPU with
# fewer SIMD extensions: numpy without its kernels above its baseline, glibc's libm without its AVX/FMA
# variants, libjpeg-turbo without SIMD. x264 is covered by tests/test_synthact.py (cpu-independent against no
# SIMD at all); torch by fourtier.runtime.hardware's fixed kernels (README, Scale and hardware). Writes
# benchmarks/results/other_cpu.txt: the stages run and what `git diff dvc.lock` says afterwards (nothing, when
# every output kept its bytes). Needs a current lock (`dvc status` clean for these stages); about 3 minutes.
#
#     bash benchmarks/other_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/other_cpu.txt
extra=$(python -c "from numpy._core._multiarray_umath import __cpu_dispatch__ as D, __cpu_features__ as F; print(' '.join(f for f in D if F.get(f)))")
export NPY_DISABLE_CPU_FEATURES="$extra" GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX2,-FMA,-AVX" JSIMD_FORCENONE=1
stages=(download-pretrain@synth-pretrain tile@synth-pretrain caption@synth-pretrain download-target@synth-scenes
        features-target@synth-scenes)
git diff --quiet dvc.lock || { echo "dvc.lock has uncommitted changes: commit or restore it first" >&2; exit 2; }
start=$(date +%s)
export FOURTIER_CACHE=$(mktemp -d)  # an empty answer cache: the VLM answers again
trap 'rm -rf "$FOURTIER_CACHE"' EXIT
for stage in "${stages[@]}"; do
  dvc repro -f -s "$stage" > /dev/null
done
{ echo "# bash benchmarks/other_cpu.sh at $(git rev-parse --short HEAD), $(date -u +%F), $(($(date +%s) - start)) s"
  echo "# posing as another CPU: NPY_DISABLE_CPU_FEATURES='$extra' GLIBC_TUNABLES=$GLIBC_TUNABLES JSIMD_FORCENONE=1"
  echo "# stages re-run (forced): ${stages[*]}"
  if git diff --quiet dvc.lock; then echo "dvc.lock unchanged: every output has the committed bytes"
  else echo "dvc.lock changed:"; git diff --stat dvc.lock; git diff dvc.lock | grep '^[-+] *md5' ; fi; } | tee "$out"
