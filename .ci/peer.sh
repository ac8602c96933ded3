#!/usr/bin/env bash
# .ci/peer.sh — the tests that compare with llama.cpp run on this host (marked `peer`): builds the peer,
# llama-cpp-python 0.3.36, with clang as ../shared/PEERS.md says (gcc 12 miscompiles its AMX path), unless it is
# already installed. About 6 minutes on 2 cores the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import llama_cpp" 2>/dev/null; then
    if ! command -v clang++-16 >/dev/null; then
        apt-get update -qq && apt-get install -y -qq clang-16 libomp-16-dev >/dev/null
    fi
    CCACHE_DISABLE=1 CC=clang-16 CXX=clang++-16 CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" \
        pip install -q --no-cache-dir "llama-cpp-python==0.3.36"
fi
python -m pytest -q -m peer
