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

# Tests: the kernel suite plus one model-logits test for the kernel backends.
TESTS=()
[ -f tests/test_kernels.py ] && TESTS+=(tests/test_kernels.py)
MODEL_K=${ARM_MODEL_K:-kernel_backends and q4_0}   # one model-logits test per kernel backend

# profile name | qemu | -cpu | expected tilellm.backend.available() | expected SVL bits (0 = no SME)
PROFILES=(
  "m4-like|$Q|max,sve=off,sme512=on|sme2,sme,neon,portable,reference|512"
  "sme2-svl128|$Q|max,sme256=off,sme_fa64=off|sme2,sme,neon,portable,reference|128"
  "sme2-svl256|$Q|max,sme_fa64=off|sme2,sme,neon,portable,reference|256"
  "sme2-svl2048|$Q|max,sme2048=on,sme_fa64=off|sme2,sme,neon,portable,reference|2048"
  "sme1-only|$Q7|max,sme512=on|sme,neon,portable,reference|512"
  "armv8.2-no-sme|$Q|neoverse-n1|neon,portable,reference|0"
)
SUMMARY=()
for p in "${PROFILES[@]}"; do
    IFS='|' read -r name qemu cpu want svl <<<"$p"
    echo "== arm profile $name: $(basename "$qemu") -cpu $cpu"
    arm_run "$qemu" "$cpu" -E PYTHONPATH="$W/site" "$R/usr/bin/python3" scripts/arm_profile_check.py "$want" "$svl"
    for v in ${want//,/ }; do
        [ "$v" = reference ] && continue
        # every kernel backend of this profile, forced through TILELLM_BACKEND
        arm_run "$qemu" "$cpu" -E PYTHONPATH="$W/site" -E TILELLM_BACKEND="$v" "$R/usr/bin/python3" -c \
            "from tilellm import backend; b = backend.get(); assert b.name == '$v', b.name"
    done
    log=$W/out/pytest-$name.log
    set +e
    arm_run "$qemu" "$cpu" -E PYTHONPATH="$W/site" "$R/usr/bin/python3" -m pytest -q -p no:cacheprovider \
        "${TESTS[@]}" tests/test_model_llama.py -k "not test_model_llama or ($MODEL_K)" \
        >"$log" 2>&1
    rc=$?
    set -e
    tail -1 "$log"
    if [ $rc -ne 0 ]; then cat "$log"; echo "arm: pytest failed under $name"; exit 1; fi
    SUMMARY+=("$name: $(tail -1 "$log")")
done
printf '%s\n' "== ARM summary" "${SUMMARY[@]}"
echo "arm: done in $((SECONDS - T0)) s (emulated; not performance data)"
