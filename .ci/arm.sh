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

# FA64 negative check (recipe §8): NEON inside streaming mode must trap on the M4-like profile (no
# FEAT_SME_FA64, like a real M4) and run where FA64 is on; so the profile really catches such code.
CC19="clang-19 --target=aarch64-linux-gnu --sysroot=$R -fuse-ld=lld -static -O1 -march=armv8.6-a+sme"
$CC19 scripts/arm_fa64_check.c -o "$W/out/fa64_check"
fa64() { local rc=0; arm_run "$Q" "$1" "$W/out/fa64_check" "$2" >/dev/null 2>&1 || rc=$?; echo $rc; }
r_m4=$(fa64 max,sve=off,sme512=on stream); r_fa=$(fa64 max,sme512=on stream); r_ns=$(fa64 max,sve=off,sme512=on plain)
echo "fa64 check: NEON in streaming mode rc=$r_m4 on m4-like (want 132), rc=$r_fa with FA64 (want 0); outside rc=$r_ns (want 0)"
[ "$r_m4" = 132 ] && [ "$r_fa" = 0 ] && [ "$r_ns" = 0 ] || { echo "FA64 check FAILED"; exit 1; }

# Per profile only what it proves (the M4-like one everything SME + one model test for the top backend):
KT=tests/test_kernels.py
GEMM="gemm_matches or float_types_any or threads_bit or sme_tile_shapes"
BF="BF16 or bf16 or 16bit or sme_tile_shapes"
# name | qemu | -cpu | expected tilellm.backend.available() | SVL bits (0 = no SME) | extra env | pytest files -k selection
PROFILES=(
  "m4-like|$Q|max,sve=off,sme512=on|sme2,sme,neon,portable,reference|512|-|$KT tests/test_model_llama.py tests/test_kernels_qtypes.py -k (sme and not test_model_llama) or (as_close_as_llama_cpp and sme2 and bf16)"
  "m4-bfmopa|$Q|max,sve=off,sme512=on|sme2,sme,neon,portable,reference|512|TILELLM_SME_BF16=bfmopa|$KT -k sme and ($BF)"
  "sme2-svl128|$Q|max,sme256=off,sme_fa64=off|sme2,sme,neon,portable,reference|128|-|$KT -k sme2 and ($GEMM)"
  "sme2-svl256|$Q|max,sme_fa64=off|sme2,sme,neon,portable,reference|256|-|$KT -k sme2 and ($GEMM)"
  "sme2-svl2048|$Q|max,sme2048=on,sme_fa64=off|sme2,sme,neon,portable,reference|2048|-|$KT -k sme2 and ($GEMM)"
  "sme1-only|$Q7|max,sme512=on|sme,neon,portable,reference|512|-|$KT -k sme and not sme2 and ($GEMM)"
  "armv8.2-no-sme|$Q|neoverse-n1|neon,portable,reference|0|-|$KT tests/test_kernels_kquant.py tests/test_kernels_qtypes.py tests/test_decode_paths.py tests/test_decode_layer.py -k neon or portable or reference"
)

profile() {  # one profile, output to its log; non-zero exit on any failure
    IFS='|' read -r name qemu cpu want svl env sel <<<"$1"
    local files=${sel%% -k *} k=${sel#* -k } e=()
    [ "$env" = - ] || e=(-E "$env")
    echo "== arm profile $name: $(basename "$qemu") -cpu $cpu ${e[*]}"
    arm_run "$qemu" "$cpu" -E PYTHONPATH="$W/site" "${e[@]}" "$R/usr/bin/python3" scripts/arm_profile_check.py "$want" "$svl" || return 1
    # shellcheck disable=SC2086
    arm_run "$qemu" "$cpu" -E PYTHONPATH="$W/site" "${e[@]}" "$R/usr/bin/python3" -m pytest -q -p no:cacheprovider $files -k "$k"
}

# Two lanes (qemu-user is single-threaded here), balanced by their emulated run times.
rm -f "$W"/out/profile-*.log
lane() { local rc=0; for p in "$@"; do n=${p%%|*}; profile "$p" >"$W/out/profile-$n.log" 2>&1 || { rc=1; echo "FAILED" >>"$W/out/profile-$n.log"; }; done; return $rc; }
lane "${PROFILES[0]}" "${PROFILES[2]}" "${PROFILES[3]}" & L1=$!
lane "${PROFILES[4]}" "${PROFILES[1]}" "${PROFILES[5]}" "${PROFILES[6]}" & L2=$!
rc=0; wait $L1 || rc=1; wait $L2 || rc=1
echo "== ARM summary"
for p in "${PROFILES[@]}"; do
    n=${p%%|*}; log=$W/out/profile-$n.log
    if grep -q '^FAILED$' "$log"; then cat "$log"; fi
    printf '%-16s %s | %s\n' "$n" "$(grep -m1 'SVL' "$log" | sed 's/^ *//' | cut -c1-150)" "$(tail -n 1 "$log")"
done
echo "arm: done in $((SECONDS - T0)) s (emulated; not performance data)"
exit $rc
