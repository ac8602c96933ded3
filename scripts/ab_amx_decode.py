#!/usr/bin/env python3
"""Decode right after an AMX prefill vs right after a VNNI one: one model, one process, paired rounds.

The avx512 q8_0/q4_0 prompt GEMM takes the AMX path for n >= 96 tokens, so a 128-token prompt evaluated at once
is an AMX prefill and the same prompt in two 64-token chunks a VNNI one, on the same weights, KV cache and threads.
Each round runs both (order alternating): reset, prefill, then 128 timed single-token decode steps (same gemv in both
cases). The median of the paired ratios is robust to this VM's slow spells, which last seconds.

    python scripts/ab_amx_decode.py /tmp/tilellm-bench/tinyllama-4l-q4_0.gguf 24
"""
from __future__ import annotations

import sys
import time

import numpy as np


def main() -> None:
    from tilellm.llm.api import load
    from tilellm.quant import GGMLType

    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    path, rounds = sys.argv[1], int(sys.argv[2])
    m = load(path, n_ctx=1024, n_threads=2, n_batch=512, backend="avx512")
    lib = m._backend.lib
    if not lib.uses_amx(GGMLType.Q4_0, 128) or lib.uses_amx(GGMLType.Q4_0, 64):
        raise SystemExit("128 tokens do not take the AMX path here (no AMX on this CPU, or TILELLM_AMX=0)")
    rng = np.random.default_rng(0)
    tg: dict[str, list[float]] = {"amx": [], "vnni": []}
    for r in range(rounds):
        for mode in ("amx", "vnni") if r % 2 == 0 else ("vnni", "amx"):
            prompt = rng.integers(3, m.n_vocab, 128).tolist()
            toks = rng.integers(3, m.n_vocab, 128).tolist()
            m.reset()
            time.sleep(0.3)
            if mode == "amx":
                m.eval(prompt)
            else:
                m.eval(prompt[:64])
                m.eval(prompt[64:])
            t0 = time.perf_counter()
            for t in toks:
                m.eval([t])
            tg[mode].append(128 / (time.perf_counter() - t0))
            print(f"round {r} {mode:4s} prefill, then tg128 {tg[mode][-1]:6.1f} t/s", flush=True)
    for mode, v in tg.items():
        print(f"after {mode} prefill: tg128 median {np.median(v):.1f} best {max(v):.1f} min {min(v):.1f}")
    ratio = np.array(tg["amx"]) / np.array(tg["vnni"])
    print(f"paired amx/vnni tg ratio: median {np.median(ratio):.3f} (quartiles {np.percentile(ratio, 25):.2f}"
          f"-{np.percentile(ratio, 75):.2f})")


if __name__ == "__main__":
    main()
