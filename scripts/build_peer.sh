#!/usr/bin/env bash
# scripts/build_peer.sh ISA — build llama.cpp (llama-cpp-python 0.3.36, the benchmark peer) with clang-16 into
# .peers/ISA/ (git-ignored), for `scripts/bench_peer.py --peer-isa ISA`:
#   native  GGML_NATIVE=ON: everything this CPU has (AMX, AVX-512 ...), what `pip install '.[bench]'` gives
#   avx2    GGML_NATIVE=OFF with only AVX/AVX2/FMA/F16C: what an AVX2-only CPU runs, on any x86 host
# gcc 12 miscompiles llama.cpp's AMX path, hence clang (../shared/PEERS.md). ~6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
isa=${1:?usage: scripts/build_peer.sh native|avx2}
case "$isa" in
    native) cmake_args="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" ;;
    avx2) cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF" ;;
    *) echo "error: unknown peer ISA '$isa' (native or avx2)" >&2; exit 2 ;;
esac
if ! command -v clang++-16 >/dev/null; then
    apt-get update -qq && apt-get install -y -qq clang-16 libomp-16-dev >/dev/null
fi
rm -rf ".peers/$isa"
CCACHE_DISABLE=1 CC=clang-16 CXX=clang++-16 CMAKE_ARGS="$cmake_args" \
    pip install -q --no-cache-dir --no-deps --target ".peers/$isa" "llama-cpp-python==0.3.36"
echo "built .peers/$isa (use: LLAMA_CPP_LIB_PATH=$PWD/.peers/$isa/llama_cpp/lib, or bench_peer.py --peer-isa $isa)"
