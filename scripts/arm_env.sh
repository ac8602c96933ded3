# scripts/arm_env.sh — sourced by .ci/arm.sh: the cross toolchain, a static qemu-aarch64 >= 10.1 (SME2),
# bookworm's qemu 7.2 (SME1 only) and an arm64 Debian userland, all cached under .armlab/ (git-ignored).
# Follows /work/shared/arm/README.md (the team's tested recipe). Idempotent: a warm cache does nothing.
set -euo pipefail
W=${W:-$PWD/.armlab}
Q=$W/bin/qemu-aarch64          # qemu >= 10.1: SME2
Q7=/usr/bin/qemu-aarch64-static  # bookworm's 7.2: SME1 only
R=$W/rootfs
mkdir -p "$W/bin" "$W/out"

need=()
for t in clang-19 ld.lld-19 llvm-objdump-19 mmdebstrap qemu-aarch64-static; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
    echo "arm: installing clang-19 lld-19 llvm-19 mmdebstrap qemu-user-static (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends clang-19 lld-19 llvm-19 mmdebstrap qemu-user-static >/dev/null
fi

# The Debian mirror, read from the machine's own apt sources (never hard-coded).
arm_mirror() {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do [ ! -f "$f" ] || cat "$f"; done |
        awk '!m && ($1=="URIs:" || $1=="deb") {for (i=2; i<=NF; i++) if ($i ~ /^[a-z+]+:\/\// && $i !~ /-security/) {print $i; m=1; break}}'
}

if [ ! -x "$Q" ]; then
    MIRROR=$(arm_mirror); [ -n "$MIRROR" ] || { echo "arm: no Debian archive URI found in the apt sources" >&2; exit 1; }
    A=$W/apt; rm -rf "$A"; mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
    printf 'deb %s trixie-backports main\ndeb %s sid main\n' "$MIRROR" "$MIRROR" > "$A/sources.list"
    AO="-o Dir::Etc::SourceList=$A/sources.list -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists=$A/lists -o Dir::Cache=$A/cache -o APT::Architectures::=amd64 -o APT::Sandbox::User=root"
    echo "arm: fetching qemu-user (static, SME2) from trixie-backports/sid via a private apt config"
    apt-get $AO update -qq
    (cd "$A" && apt-get $AO download qemu-user >/dev/null)
    dpkg-deb --fsys-tarfile "$A"/qemu-user_*.deb | tar -xO ./usr/bin/qemu-aarch64 > "$Q.tmp"
    chmod +x "$Q.tmp"; mv "$Q.tmp" "$Q"; rm -rf "$A"
fi

if [ ! -f "$R/.complete" ]; then
    MIRROR=$(arm_mirror); [ -n "$MIRROR" ] || { echo "arm: no Debian archive URI found in the apt sources" >&2; exit 1; }
    echo "arm: building the arm64 userland (mmdebstrap --variant=extract)"
    rm -rf "$R"
    mmdebstrap --quiet --mode=root --arch=arm64 --variant=extract \
        --include=python3,python3-numpy,python3-cffi,python3-pytest,python3-dev,libc6-dev,libgcc-12-dev \
        bookworm "$R" "$MIRROR"
    touch "$R/.complete"
fi

# Run an aarch64 program under qemu: arm_run <qemu binary> <cpu> prog args...
arm_run() {
    local qemu=$1 cpu=$2; shift 2
    "$qemu" -cpu "$cpu" -L "$R" \
        -E LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu/blas:/usr/lib/aarch64-linux-gnu/lapack \
        -E PYTHONDONTWRITEBYTECODE=1 "$@"
}
