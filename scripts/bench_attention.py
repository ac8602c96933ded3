#!/usr/bin/env python3
"""The C attention kernel (tl_attention_kv) alone, at the shapes of a prompt or a decode step at depth (issue #18).

    python scripts/bench_attention.py                         # pp512 at depth 0/1024/4096, TinyLlama heads, f16 cache
    python scripts/bench_attention.py --T 1 --depths 0,4096   # one decode step
    python scripts/bench_attention.py --so /tmp/old/_tl_avx512.abi3.so --so ""   # an older build vs this one

Times one layer's attention (q [T, H, D], k/v [depth+T, Hkv, D] of --cache type) on --threads threads: best of
--reps of wall time and of process CPU time, and GFLOP/s counted on the visible (query, key) pairs only (4*D
flops each: q.k and p.v). Several --so builds are timed interleaved, round by round (the machine is shared).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import time
from typing import Any

import numpy as np


def load_lib(path: str, variant: str) -> Any:
    """The cffi module of one built variant: this checkout's (path "") or an extension file elsewhere."""
    if not path:
        from tilellm import kernels
        return kernels.load(variant)
    name = os.path.basename(path).split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    mod.lib.tl_init()
    return mod


def operands(T: int, depth: int, H: int, Hkv: int, D: int, cache: str, seed: int = 0) -> tuple:
    from tilellm.quant.kv import kv_encode, kv_type
    rng = np.random.default_rng(seed)
    S = depth + T
    q = rng.standard_normal((T, H, D), dtype=np.float32)
    k = kv_encode(rng.standard_normal((S, Hkv, D), dtype=np.float32), kv_type(cache))
    v = kv_encode(rng.standard_normal((S, Hkv, D), dtype=np.float32), kv_type(cache))
    return q, np.ascontiguousarray(k), np.ascontiguousarray(v)


def flops(T: int, depth: int, H: int, D: int) -> float:
    pairs = T * depth + T * (T + 1) / 2  # visible (query, key) pairs per head
    return 4.0 * D * H * pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--depths", default="0,1024,4096")
    ap.add_argument("--heads", default="32,4,64", help="H,Hkv,D")
    ap.add_argument("--cache", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variant", default="avx512")
    ap.add_argument("--so", action="append", help="extension file of a build to time ('' = this checkout's)")
    args = ap.parse_args()
    from tilellm.quant.kv import kv_type_of
    H, Hkv, D = (int(x) for x in args.heads.split(","))
    builds = args.so if args.so else [""]
    # this checkout's first: cffi registers a module under its package name, and a later import of that name
    # would find the other file's
    loaded = {p: load_lib(p, args.variant) for p in sorted(set(builds), key=bool)}
    libs = [loaded[p] for p in builds]
    print(f"T={args.T} H={H} Hkv={Hkv} D={D} cache={args.cache} threads={args.threads} "
          f"load={os.getloadavg()[0]:.1f}")
    for depth in (int(x) for x in args.depths.split(",")):
        q, k, v = operands(args.T, depth, H, Hkv, D, args.cache)
        out = [np.empty_like(q) for _ in libs]
        kt = int(kv_type_of(k))
        best = [[np.inf, np.inf] for _ in libs]
        for _ in range(args.reps):
            for i, m in enumerate(libs):
                ffi, lib = m.ffi, m.lib
                qp = ffi.cast("float *", ffi.from_buffer(q))
                kp, vp = ffi.cast("void *", ffi.from_buffer(k)), ffi.cast("void *", ffi.from_buffer(v))
                op = ffi.cast("float *", ffi.from_buffer(out[i], require_writable=True))
                w0, c0 = time.perf_counter(), time.process_time()
                rc = lib.tl_attention_kv(qp, H * D, kp, kt, k.strides[0], vp, kt, v.strides[0], op, H * D, args.T,
                                         depth + args.T, H, Hkv, D, depth, 0, 1 / np.sqrt(D), args.threads)
                w, c = time.perf_counter() - w0, time.process_time() - c0
                assert rc == 0, rc
                best[i] = [min(best[i][0], w), min(best[i][1], c)]
        f = flops(args.T, depth, H, D)
        for i, b in enumerate(builds):
            diff = float(np.abs(out[i] - out[0]).max())
            print(f"depth {depth:5d} {b or 'this checkout':40s} wall {best[i][0] * 1e3:8.2f} ms "
                  f"({f / best[i][0] / 1e9:6.1f} GFLOP/s)  cpu {best[i][1] * 1e3:8.2f} ms "
                  f"({f / best[i][1] / 1e9:6.1f} GFLOP/s per core-second)  max|diff| vs first {diff:.2e}")


if __name__ == "__main__":
    main()
