#!/usr/bin/env bash
# scripts/build_llama_server.sh — build llama.cpp's `llama-server` (the serving peer of issue #15) from the
# llama.cpp that llama-cpp-python 0.3.36 vendors (commit 0c1e570: the same source as our library peer),
# with clang-16 and GGML_NATIVE=ON as ../shared/PEERS.md builds the library (gcc 12 miscompiles the AMX
# path). Result: .peers/server/llama-server, statically linked against ggml/llama (git-ignored), for
# `scripts/bench_server.py`. About 10-15 minutes on 2 cores.
#
#   scripts/build_llama_server.sh            # PYTHON=python3 by default: its pip downloads the sdist
#   SDIST=path/llama_cpp_python-0.3.36.tar.gz scripts/build_llama_server.sh   # an sdist at hand instead
#   JOBS=1 scripts/build_llama_server.sh     # gentler on a shared machine
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
jobs=${JOBS:-2}
out=.peers/server
src=$out/src
if ! command -v clang++-16 >/dev/null; then
    apt-get update -qq && apt-get install -y -qq clang-16 libomp-16-dev >/dev/null
fi
mkdir -p "$src"
if [ ! -d "$src/llama_cpp_python-0.3.36/vendor/llama.cpp" ]; then
    if [ -n "${SDIST:-}" ]; then
        cp "$SDIST" "$src/llama_cpp_python-0.3.36.tar.gz"
    else
        "$py" -m pip download -q --no-binary :all: --no-deps -d "$src" "llama-cpp-python==0.3.36"
    fi
    tar xzf "$src/llama_cpp_python-0.3.36.tar.gz" -C "$src" llama_cpp_python-0.3.36/vendor/llama.cpp
fi
lc=$src/llama_cpp_python-0.3.36/vendor/llama.cpp
CCACHE_DISABLE=1 cmake -S "$lc" -B "$lc/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER=clang-16 -DCMAKE_CXX_COMPILER=clang++-16 -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >/dev/null
CCACHE_DISABLE=1 cmake --build "$lc/build" -j"$jobs" --target llama-server
cp "$lc/build/bin/llama-server" "$out/llama-server"
"$out/llama-server" --version 2>&1 | head -2 || true
echo "built $out/llama-server (scripts/bench_server.py finds it there)"
