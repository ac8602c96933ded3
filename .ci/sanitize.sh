#!/usr/bin/env bash
# .ci/sanitize.sh — the C kernels under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# A separate, non-editable install of a COPY of the tree into its own venv, built with the
# sanitizer flags through the normal setup.py path (TILELLM_CFLAGS), so the editable install in
# the checkout is never touched. Then the kernel tests run with the ASan/UBSan runtimes
# preloaded into the (uninstrumented) Python. Any sanitizer report fails the step: the runtimes
# abort on the first error, and the whole output is scanned for report markers afterwards.
#
# Env: TILELLM_SANITIZE_CACHE  where the venv is kept between runs (default ~/.cache/tilellm)
#      TILELLM_SANITIZE_PATCH  a patch (-p1) applied to the copy before building — for proving
#                              that an injected bug fails this step (docs/robustness.md)
#      TILELLM_SANITIZE_MODEL_K  pytest -k of the model-vs-llama.cpp tests (default
#                              as_close_as_llama_cpp; "" runs everything as strict kernel tests)
#      TILELLM_SANITIZE_TESTS  the test files to run instead of the default list (e.g. one file,
#                              to reproduce a report quickly)
#      CC                      must be gcc-compatible with `-print-file-name` (default gcc)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T0=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-$(command -v python3 || command -v python)}
CC=${CC:-gcc}
export CC

SAN_FLAGS="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=all -g -O1"
# Python's own CFLAGS carry -fwrapv, which would hide signed overflow from UBSan: the kernels
# must not rely on it (other compilers/build systems do not pass it).
SAN_FLAGS="$SAN_FLAGS -fno-wrapv"

LIBASAN=$($CC -print-file-name=libasan.so)
LIBUBSAN=$($CC -print-file-name=libubsan.so)
for lib in "$LIBASAN" "$LIBUBSAN"; do
    if [ ! -e "$lib" ]; then echo "sanitize: $CC has no $(basename "$lib") (install libasan/libubsan)"; exit 1; fi
done

# ---- 1. venv with the runtime + build dependencies (cached; rebuilt when pyproject changes) ----
CACHE=${TILELLM_SANITIZE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tilellm}
mkdir -p "$CACHE"
DEPS=$("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
try:
    import tomllib
    d = tomllib.loads(text)
    reqs = d["build-system"]["requires"] + d["project"]["dependencies"] + d["project"]["optional-dependencies"]["test"]
except ImportError:  # Python 3.10: the three lists are flat string arrays, one line each
    reqs = []
    for key in ("requires", "dependencies", "test"):
        m = re.search(r"^%s\s*=\s*\[(.*?)\]" % key, text, re.M | re.S)
        reqs += re.findall(r'"([^"]+)"', m.group(1)) if m else []
print("\n".join(reqs))
EOF
)
KEY=$( { "$PY" -c 'import sys; print(sys.version)'; echo "$DEPS"; } | sha256sum | cut -c1-12)
VENV=$CACHE/sanitize-venv-$KEY
exec 9>"$CACHE/sanitize.lock"
if command -v flock >/dev/null; then flock 9; fi   # concurrent runs share the venv; builds are per run
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
    rm -rf "$VENV"
    echo "== sanitize: creating $VENV"
    "$PY" -m venv "$VENV"
    mapfile -t REQS <<<"$DEPS"
    "$VENV/bin/python" -m pip install -q "${REQS[@]}"
    touch "$VENV/.complete"
fi
for old in "$CACHE"/sanitize-venv-*; do [ "$old" != "$VENV" ] && rm -rf "$old"; done   # stale deps
exec 9>&-

# ---- 2. copy of the tree (tracked + untracked, not ignored), sanitized build -----------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tilellm-sanitize.XXXXXX")
[ -n "${TILELLM_SANITIZE_KEEP:-}" ] && echo "== sanitize: keeping $WORK" || trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/src
"$PY" - "$ROOT" "$SRC" <<'EOF'
import os, shutil, subprocess, sys
root, dst = sys.argv[1], sys.argv[2]
try:
    out = subprocess.run(["git", "-C", root, "ls-files", "-z", "-co", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f]
except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but build products
    skip = {".git", "build", "dist", ".armlab", ".venv", "__pycache__", ".pytest_cache"}
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip and not x.endswith(".egg-info")]
        files += [os.path.relpath(os.path.join(d, n), root) for n in names if not n.endswith((".so", ".o", ".pyc"))]
for f in files:
    if f.startswith("tests/data/"):
        continue  # large read-only fixtures: linked below
    s = os.path.join(root, f)
    if os.path.isfile(s):  # tracked files deleted in the working tree are skipped
        os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
        shutil.copy2(s, os.path.join(dst, f))
if os.path.isdir(os.path.join(root, "tests", "data")):
    os.makedirs(os.path.join(dst, "tests"), exist_ok=True)
    os.symlink(os.path.join(root, "tests", "data"), os.path.join(dst, "tests", "data"))
EOF
if [ -n "${TILELLM_SANITIZE_PATCH:-}" ]; then
    echo "== sanitize: applying $TILELLM_SANITIZE_PATCH to the copy"
    (cd "$SRC" && git apply -p1 "$(realpath "$TILELLM_SANITIZE_PATCH")")   # works outside a repo; never prompts
fi

echo "== sanitize: building the kernels with $SAN_FLAGS"
# One `pip install --target` per variant, in parallel, each from its own copy of the tree: the
# variants compile the shared sources to the same object paths (build/temp*/kernels/src/*.o), so
# one build dir for all of them could only be serial (`build_ext -j` races and links one variant's
# objects into another). The package from the first and the other variants' modules are then merged
# into one site dir that the tests import through PYTHONPATH (the venv itself holds only the deps).
export TILELLM_CFLAGS="$SAN_FLAGS"
VARIANTS=$(cd "$SRC" && "$VENV/bin/python" -c \
    'import sys; sys.path.insert(0, "kernels"); import build_variants as bv; print(" ".join(bv.select_variants()))')
[ -n "$VARIANTS" ] || { echo "sanitize: no kernel variant builds with these flags"; exit 1; }
"$VENV/bin/python" -m pip uninstall -q -y tilellm >/dev/null 2>&1 || true   # left by older versions of this script
pids=()
for v in $VARIANTS; do
    cp -a "$SRC" "$WORK/src-$v"
    TILELLM_VARIANTS=$v "$VENV/bin/python" -m pip install -v --no-deps --no-build-isolation \
        --target "$WORK/site-$v" "$WORK/src-$v" >"$WORK/build-$v.log" 2>&1 &
    pids+=($!)
done
i=0
for v in $VARIANTS; do
    if ! wait "${pids[$i]}"; then
        tail -60 "$WORK/build-$v.log"; echo "sanitize: the sanitized build of $v failed"; exit 1
    fi
    i=$((i + 1))
done
SITE=$WORK/site
first=${VARIANTS%% *}
cp -a "$WORK/site-$first" "$SITE"
for v in $VARIANTS; do
    [ "$v" = "$first" ] || cp "$WORK/site-$v"/tilellm/kernels/_tl_"$v".* "$SITE/tilellm/kernels/"
done
unset TILELLM_CFLAGS
echo "== sanitize: built in $((SECONDS - T0)) s"

# ---- 3. what must be exercised: every variant the normal build makes that this CPU runs ------
PRELOAD="$LIBASAN $LIBUBSAN${LD_PRELOAD:+ $LD_PRELOAD}"
export PYTHONPATH=$SITE   # (replaces any outer PYTHONPATH: only the sanitized build may be imported)
cd "$WORK"   # not the checkout: `import tilellm` must find the sanitized build, nothing else
ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$PRELOAD" "$VENV/bin/python" - "$SRC" <<'EOF'
import os, subprocess, sys
sys.path.insert(0, os.path.join(sys.argv[1], "kernels"))
import build_variants as bv  # noqa: E402
sys.path.pop(0)
os.environ.pop("TILELLM_CFLAGS", None)
os.environ.pop("TILELLM_VARIANTS", None)
from tilellm import kernels  # noqa: E402
site = os.path.dirname(os.path.dirname(os.path.dirname(kernels.__file__)))
assert site == os.environ["PYTHONPATH"], f"tilellm imported from {site}, not the sanitized build"
feats = kernels.cpu_features()
want = [v for v in bv.select_variants(verbose=False) if kernels.REQUIRES[v] <= feats]
got = [v for v in kernels.compiled() if kernels.REQUIRES[v] <= feats]
for v in got:
    mod = __import__(f"tilellm.kernels._tl_{v}", fromlist=["_"])
    syms = subprocess.run(["nm", "-D", mod.__file__], capture_output=True, text=True).stdout
    assert "__asan_report_load" in syms and "__ubsan_handle" in syms, f"{mod.__file__} is not instrumented"
missing = sorted(set(want) - set(got))
assert not missing, f"variants this CPU runs but the sanitized build lacks: {missing}"
print(f"== sanitize: instrumented variants exercised here: {', '.join(got)}")
EOF

# ---- 4. the tests, with the sanitizer runtimes preloaded -------------------------------------
# detect_leaks=0: CPython leaks by design at exit. allocator_may_return_null=1: a failed huge
# malloc returns NULL (MemoryError) as it would without ASan, instead of aborting.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1"
# every Python-side allocation through malloc, so ASan puts redzones around small buffers too
export PYTHONMALLOC=malloc
LOG=$WORK/pytest.log
run_pytest() {
    echo "== sanitize: pytest $*"
    # --capture=sys: pytest must not swallow fd 2, where the sanitizer reports go (a report
    # kills the process, and fd-level capture would lose it with the process).
    (cd "$SRC" && LD_PRELOAD="$PRELOAD" "$VENV/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" \
        --capture=sys -m "not slow" "$@") 2>&1 | tee -a "$LOG"
}
# Everything that calls into C: the kernel suites (test_kernels*.py), the boundary tests, the
# attention kernel (f32 and the f16/bf16/q8_0 KV caches it reads), the decode paths (tl_gemm_many, plans, fused preparations, the one-call layer). Comparisons of whole models with llama.cpp ("as_close_as_llama_cpp") run
# separately below.
ACC_K=${TILELLM_SANITIZE_MODEL_K-as_close_as_llama_cpp}
TESTS=()
for t in "$SRC"/tests/test_kernels*.py "$SRC"/tests/test_kernel_boundary.py "$SRC"/tests/test_attention.py \
         "$SRC"/tests/test_kv_cache.py "$SRC"/tests/test_decode_paths.py "$SRC"/tests/test_decode_layer.py; do
    [ -f "$t" ] && TESTS+=("${t#"$SRC"/}")
done
if [ -n "${TILELLM_SANITIZE_TESTS:-}" ]; then read -r -a TESTS <<<"$TILELLM_SANITIZE_TESTS"; fi
if [ ! -f "$SRC/tests/test_kernels.py" ]; then echo "sanitize: tests/test_kernels.py is missing"; exit 1; fi
KSEL=()
[ -n "$ACC_K" ] && KSEL=(-k "not ($ACC_K)")
rc=0
run_pytest "${TESTS[@]}" ${KSEL[@]+"${KSEL[@]}"} || rc=$?
if [ "$rc" -eq 0 ] && [ -n "$ACC_K" ]; then
    # Real models on mmap'd weights through every kernel backend: here for memory coverage.
    # Their accuracy asserts (vs llama.cpp's measured error) are the main test step's business,
    # so ordinary test failures (status 1) are reported but do not fail this step; a crash or a
    # sanitizer report does.
    mrc=0
    run_pytest tests/test_model_llama.py "${TESTS[@]}" -k "$ACC_K" || mrc=$?
    if [ "$mrc" -eq 1 ]; then
        echo "sanitize: note: model accuracy failures above are not sanitizer findings (the main test step judges them)"
    elif [ "$mrc" -ne 0 ] && [ "$mrc" -ne 5 ]; then
        rc=$mrc
    fi
fi

# Markers of the ASan and UBSan runtimes' reports (a report in a test's subprocess lands here too
# when the test passes its stderr through).
if grep -E -q "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$LOG"; then
    echo "---- sanitizer report(s):"
    grep -E -A40 "ERROR: AddressSanitizer|runtime error:" "$LOG" | head -120
    echo "sanitize: FAILED: sanitizer report"
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    [ "$rc" -gt 128 ] && echo "sanitize: pytest died with signal $((rc - 128))"
    echo "sanitize: FAILED (pytest exit status $rc)"
    exit 1
fi
echo "sanitize: clean in $((SECONDS - T0)) s ($(grep -E -o "[0-9]+ passed" "$LOG" | awk '{s += $1} END {print s + 0}') tests passed)"
