#!/usr/bin/env bash
# .ci/arm.sh — the ARM kernel variants (portable, neon, sme, sme2), cross-compiled with clang-19 and
# tested under qemu-user in an arm64 Debian userland (recipe: /work/shared/arm/README.md).
# Self-contained and idempotent; caches under .armlab/ (git-ignored). Emulation proves correctness
# only: no timing printed here is performance data for any ARM CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
export W=$PWD/.armlab
source scripts/arm_env.sh      # clang-19, qemu 11 (SME2) as $Q, qemu 7.2 (SME1) as $Q7, rootfs as $R, arm_run

"$Q" --version | head -1
python3 scripts/arm_build.py --rootfs "$R" --site "$W/site" portable neon sme sme2

# Static check of the built SME modules (host pytest, llvm-objdump-19): 4 FMOPA per A load + one x4 B load.
TILELLM_ARM_SITE="$W/site" python3 -m pytest -q -p no:cacheprovider tests/test_sme_disasm.py

# One model-logits test per kernel backend (the q4_0 LLaMA fixture), on the M4-like and the plain v8.2 core.
MODEL_K=${ARM_MODEL_K:-kernel_backends and q4_0}
KT=tests/test_kernels.py
GEMM="gemm_matches or float_types_any or threads_bit"
# name | qemu | -cpu | expected tilellm.backend.available() | SVL bits (0 = no SME) | pytest selection
PROFILES=(
  "m4-like|$Q|max,sve=off,sme512=on|sme2,sme,neon,portable,reference|512|$KT tests/test_model_llama.py -k (sme and not test_model_llama) or ($MODEL_K)"
  "sme2-svl128|$Q|max,sme256=off,sme_fa64=off|sme2,sme,neon,portable,reference|128|$KT -k sme2 and ($GEMM)"
  "sme2-svl256|$Q|max,sme_fa64=off|sme2,sme,neon,portable,reference|256|$KT -k sme2 and ($GEMM)"
  "sme2-svl2048|$Q|max,sme2048=on,sme_fa64=off|sme2,sme,neon,portable,reference|2048|$KT -k sme and ($GEMM)"
  "sme1-only|$Q7|max,sme512=on|sme,neon,portable,reference|512|$KT -k sme and ($GEMM)"
  "armv8.2-no-sme|$Q|neoverse-n1|neon,portable,reference|0|$KT tests/test_model_llama.py -k (neon or portable) and not test_model_llama or ($MODEL_K)"
)

profile() {  # one profile, output to its log; non-zero exit on any failure
    IFS='|' read -r name qemu cpu want svl sel <<<"$1"
    local files=${sel%% -k *} k=${sel#* -k }
    echo "== arm profile $name: $(basename "$qemu") -cpu $cpu"
    arm_run "$qemu" "$cpu" -E PYTHONPATH="$W/site" "$R/usr/bin/python3" scripts/arm_profile_check.py "$want" "$svl" || return 1
    # shellcheck disable=SC2086
    arm_run "$qemu" "$cpu" -E PYTHONPATH="$W/site" "$R/usr/bin/python3" -m pytest -q -p no:cacheprovider $files -k "$k"
}

# Two lanes (qemu-user is single-threaded here): M4-like + plain v8.2 beside the SVL / SME1 sweep.
rm -f "$W"/out/profile-*.log
lane() { local rc=0; for p in "$@"; do n=${p%%|*}; profile "$p" >"$W/out/profile-$n.log" 2>&1 || { rc=1; echo "FAILED" >>"$W/out/profile-$n.log"; }; done; return $rc; }
lane "${PROFILES[0]}" "${PROFILES[5]}" & L1=$!
lane "${PROFILES[@]:1:4}" & L2=$!
rc=0; wait $L1 || rc=1; wait $L2 || rc=1
echo "== ARM summary"
for p in "${PROFILES[@]}"; do
    n=${p%%|*}; log=$W/out/profile-$n.log
    if grep -q '^FAILED$' "$log"; then cat "$log"; fi
    printf '%-16s %s | %s\n' "$n" "$(grep -m1 'SVL' "$log" | sed 's/^ *//' | cut -c1-150)" "$(tail -n 1 "$log")"
done
echo "arm: done in $((SECONDS - T0)) s (emulated; not performance data)"
exit $rc
