#!/usr/bin/env python3
"""Time the activation preparation (the int8 quantizers of kernels/src/act.c and the x86 act_prepare), next to the
matmul it feeds, for each kernel variant: what the non-finite check of issue #14 could cost.

    python scripts/bench_act_prepare.py                       # this install
    python scripts/bench_act_prepare.py --ab /tmp/before-site # A/B: rounds alternate between the build found at
                                                              # that PYTHONPATH and this one, medians per side

Shapes are LLM ones of bench_peer.py's --gemm --quick (k = 2048 and 5632 for n = 1, decode; k = 2048 for n = 512,
a prompt), q8_0; per (variant, type, k, n): CPU microseconds (1 thread) per prepare, per fused RMS-norm prepare, and per
matmul
(m = 2048) with the prepared activations. Prints JSON lines (one per measurement) or, with --ab, a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SHAPES = [(2048, 1), (5632, 1), (2048, 512)]
TYPES = ("q8_0",)  # every quantized weight type shares one int8 quantizer per variant (K-quants too)
M = 2048
THREADS = 1  # the quantizer's own cost, without thread wake-ups


def _best_us(fn, min_s: float = 0.05) -> float:
    """Best of 9 batches, microseconds of process CPU time per call: on a shared machine the CPU time a call
    takes moves far less than its wall time (one thread, so the two are the same on an idle one)."""
    fn()
    t0 = time.process_time()
    fn()
    reps = max(1, int(min_s / max(time.process_time() - t0, 1e-6)))
    best = float("inf")
    for _ in range(9):
        t0 = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - t0) / reps)
    return best * 1e6


def measure() -> list[dict]:
    from tilellm import backend, kernels
    from tilellm.quant import GGMLType, quantize

    rng = np.random.default_rng(0)
    rows = []
    for variant in [b for b in backend.available() if b != "reference"]:
        lib = kernels.load(variant, THREADS)
        for t in TYPES:
            tt = GGMLType[t.upper()]
            for k, n in SHAPES:
                x = rng.standard_normal((n, k)).astype(np.float32)
                w = np.ones(k, np.float32)
                raw = quantize((rng.standard_normal((M, k)) / np.sqrt(k)).astype(np.float32), tt)
                p = lib.prepare(tt, x)
                rows.append({"variant": variant, "type": t, "k": k, "n": n, "from": kernels.__file__,
                             "prepare_us": _best_us(lambda: lib.prepare(tt, x)),
                             "rms_us": _best_us(lambda: lib.prepare_rms(tt, x, w, 1e-5)),
                             "gemm_us": _best_us(lambda: lib.gemm(tt, raw, k, p))})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ab", metavar="PYTHONPATH", help="A/B against the build importable from this PYTHONPATH")
    ap.add_argument("--rounds", type=int, default=2, help="A/B rounds (each side once per round)")
    args = ap.parse_args(argv)
    if not args.ab:
        for r in measure():
            print(json.dumps(r))
        return 0
    runs: dict[str, list[list[dict]]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
            env = dict(os.environ)
            if side == "before":
                env["PYTHONPATH"] = args.ab
            out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, check=True,
                                 cwd="/")  # not the checkout: its tilellm must not shadow the A side's
            runs[side].append([json.loads(line) for line in out.stdout.splitlines()])
            origins = {r[0][0]["from"] for r in runs.values() if r}
            if i == 0 and side == "after" and len(origins) < 2:
                sys.exit(f"both sides import {origins.pop()}: --ab does not select another build")
            print(f"round {i + 1} {side} done", file=sys.stderr, flush=True)
    print("| variant | type | k | n | prepare µs before → after | fused rms µs before → after "
          "| matmul µs (after) |")
    print("|---|---|---|---|---|---|---|")
    for j, r in enumerate(runs["after"][0]):
        med = {s: {c: statistics.median(run[j][c] for run in runs[s]) for c in ("prepare_us", "rms_us", "gemm_us")}
               for s in runs}
        b, a = med["before"], med["after"]
        print(f"| {r['variant']} | {r['type']} | {r['k']} | {r['n']} | {b['prepare_us']:.1f} → {a['prepare_us']:.1f} "
              f"({100 * (a['prepare_us'] / b['prepare_us'] - 1):+.0f} %) | {b['rms_us']:.1f} → {a['rms_us']:.1f} "
              f"({100 * (a['rms_us'] / b['rms_us'] - 1):+.0f} %) | {a['gemm_us']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
