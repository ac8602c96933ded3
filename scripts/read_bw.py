#!/usr/bin/env python3
"""Read bandwidth of this machine: T threads stream-sum their share of one buffer (AVX2 loads, 4 accumulators).

The yardstick for the decode (gemv) kernels, which read every weight once per token. Compiles a tiny C program
with the system compiler (cc) into a temporary directory and runs it; prints GB/s (10^9 bytes/s), best and
median of the repetitions, wall-clock and per CPU-second (bytes over the threads' mean CPU time: on a shared,
loaded machine the rate while the threads actually run, comparable with a kernel's per-CPU rate). Two sizes by
default: 1 GiB (DRAM) and 136 MiB (what the bench model's q4_0 weights take per token: on a host with a large L3
that is partly cache, which is what the decode sees too).

    python scripts/read_bw.py                 # 2 threads, 1024 and 136 MiB, 5 reps
    python scripts/read_bw.py --mib 512 --threads 1 --reps 9

--gemv measures the decode kernels on the same yardstick: one token times an m x k matrix of each type (random
valid blocks), cycling over distinct copies that fill --mib (so the weights come from DRAM, as a model's do), by
the C entry point tl_gemm called straight through cffi; prints weight bytes per second, wall-clock (best batch)
and per CPU-second (bytes over the process CPU time / threads), and that as a fraction of the read rate measured
right before it with the same threads and size:

    TILELLM_CPU_CAP=avx2 python scripts/read_bw.py --gemv q4_0 q8_0 --shapes 2048x2048 32000x2048 --threads 1
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

C_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const uint8_t *buf;
static size_t share;
static int nth;
static pthread_barrier_t bar;
static double t_end[256], t_cpu[256];
static volatile uint64_t sink;

static double clk(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
static double now(void) { return clk(CLOCK_MONOTONIC); }

static void *run(void *arg) {
    int i = (int)(intptr_t)arg;
    const __m256i *p = (const __m256i *)(buf + (size_t)i * share);
    const __m256i *e = (const __m256i *)(buf + (size_t)(i + 1) * share);
    pthread_barrier_wait(&bar);
    const double c0 = clk(CLOCK_THREAD_CPUTIME_ID);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; p < e; p += 4) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(p));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(p + 1));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(p + 2));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(p + 3));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    t_end[i] = now();
    t_cpu[i] = clk(CLOCK_THREAD_CPUTIME_ID) - c0;
    sink += (uint64_t)_mm256_extract_epi64(s, 0);
    return NULL;
}

int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argv[1]) << 20;
    nth = atoi(argv[2]);
    int reps = atoi(argv[3]);
    share = bytes / nth / 128 * 128;
    uint8_t *b = aligned_alloc(4096, share * nth);
    if (!b) return 1;
    memset(b, 1, share * nth);
    buf = b;
    for (int r = 0; r < reps + 1; r++) {
        pthread_t th[256];
        pthread_barrier_init(&bar, NULL, (unsigned)nth + 1);
        for (int i = 0; i < nth; i++) pthread_create(&th[i], NULL, run, (void *)(intptr_t)i);
        pthread_barrier_wait(&bar);
        double t0 = now(), t1 = t0;
        for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < nth; i++) t1 = t_end[i] > t1 ? t_end[i] : t1;
        pthread_barrier_destroy(&bar);
        double cpu = 0.0;
        for (int i = 0; i < nth; i++) cpu += t_cpu[i] / nth;
        /* wall GB/s, and per CPU-second (the threads' mean CPU time: what a loaded machine gives them while they
         * run); rep 0 warms up (page faults) */
        if (r > 0) printf("%.3f %.3f\n", (double)(share * nth) / (t1 - t0) / 1e9, (double)(share * nth) / cpu / 1e9);
    }
    free(b);
    return 0;
}
"""


def build(tmp: str) -> str:
    """The compiled probe's path (cc -O2 -mavx2 -pthread)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("read_bw: no C compiler (cc) found")
    src, exe = os.path.join(tmp, "read_bw.c"), os.path.join(tmp, "read_bw")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    r = subprocess.run([cc, "-O2", "-mavx2", "-pthread", src, "-o", exe], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"read_bw: compile failed: {r.stderr.strip().splitlines()[-1:]}")
    return exe


def measure(exe: str, mib: int, threads: int, reps: int) -> tuple[list[float], list[float]]:
    """GB/s of each repetition: wall-clock, and per CPU-second."""
    r = subprocess.run([exe, str(mib), str(threads), str(reps)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"read_bw: the probe failed (exit {r.returncode}; out of memory?)")
    rows = [line.split() for line in r.stdout.splitlines() if line.strip()]
    return [float(w) for w, _ in rows], [float(c) for _, c in rows]


def gemv_rate(variant: str, type_name: str, m: int, k: int, mib: int, threads: int, reps: int) -> tuple[float, float]:
    """Weight bytes per second of one-token products (wall-clock best batch, per CPU-second best batch)."""
    import time

    import numpy as np

    from tilellm import kernels
    from tilellm.quant import TYPE_INFO, GGMLType

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from _qblocks import valid_blocks

    t = GGMLType[type_name.upper()]
    info = TYPE_INFO[t]
    row = k // info.block_size * info.type_size
    copies = max(1, (mib << 20) // (m * row))
    rng = np.random.default_rng(0)
    one = valid_blocks(t, m * (k // info.block_size), rng).reshape(m, row)
    ws = [one.copy() for _ in range(copies)]
    kl = kernels.load(variant, n_threads=threads)
    prep = kl.prepare(t, rng.standard_normal((1, k)).astype(np.float32))
    plans = [kl.plan(t, w, k) for w in ws]
    out = np.zeros((1, m), np.float32)
    yp = kl.ffi.from_buffer("float[]", out)
    _, bufp = kl._act_arg(t, k, prep)
    calls = [(kl.lib.tl_gemm, kl.ctx, int(t), p.wp, p.ldw, m, k, bufp, 1, yp, m, threads) for p in plans]
    per = max(copies, int(0.25e9 // (m * row)) or 1)  # ~0.25 GB of weights per batch
    best_w = best_c = 0.0
    for r in range(reps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(per):
            c = calls[i % copies]
            c[0](*c[1:])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if r:  # batch 0 warms up
            best_w, best_c = max(best_w, per * m * row / dt / 1e9), max(best_c, per * m * row / (dc / threads) / 1e9)
    return best_w, best_c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, nargs="+", default=[1024, 136], help="buffer sizes in MiB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gemv", nargs="+", metavar="TYPE", help="measure these weight types' one-token products too")
    ap.add_argument("--shapes", nargs="+", default=["2048x2048", "5632x2048", "2048x5632", "32000x2048"],
                    help="m x k of the --gemv products")
    ap.add_argument("--variant", default="auto", help="kernel variant for --gemv (auto: the best this CPU runs)")
    a = ap.parse_args()
    if not 1 <= a.threads <= 256 or a.reps < 1 or any(m < 1 for m in a.mib):
        sys.exit("read_bw: threads 1..256, reps >= 1, sizes >= 1 MiB")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        if a.gemv:
            from tilellm.backend import registry

            variant = registry.available()[0] if a.variant == "auto" else a.variant
            mib = a.mib[0]
            _, c = measure(exe, mib, a.threads, a.reps)
            read = max(c)
            print(f"read {mib} MiB, {a.threads} threads: per CPU-second best {read:.1f} GB/s "
                  f"(load {os.getloadavg()[0]:.1f}); variant {variant}")
            for tn in a.gemv:
                for shape in a.shapes:
                    m, k = (int(v) for v in shape.lower().split("x"))
                    w, c = gemv_rate(variant, tn, m, k, mib, a.threads, a.reps)
                    print(f"  {tn:5s} {m:6d} x {k:5d}: wall best {w:5.1f} GB/s, per CPU-s best {c:5.1f} GB/s = "
                          f"{c / read:4.0%} of read (load {os.getloadavg()[0]:.1f})", flush=True)
            return
        for mib in a.mib:
            w, c = measure(exe, mib, a.threads, a.reps)
            print(f"{mib} MiB, {a.threads} threads: best {max(w):.1f} GB/s, median {statistics.median(w):.1f} GB/s; "
                  f"per CPU-second best {max(c):.1f}, median {statistics.median(c):.1f} "
                  f"({len(w)} reps; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
