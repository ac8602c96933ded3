#!/usr/bin/env python3
"""tilellm vs llama.cpp, side by side in ONE run (the machines are shared and noisy).

Model mode (default): for each weight type, a synthetic TinyLlama-shaped GGUF (hidden 2048, ffn
5632, 32 heads, 4 KV heads, vocab 32000, 4 layers; scripts/make_synthetic_gguf.py), then pp512
and tg128 with 2 threads for every tilellm kernel backend and for llama.cpp through
llama-cpp-python on the same file. Timed rounds are interleaved (peer, ours, peer, ours, ...) so
background load hits both alike; medians after a warm-up. Prints a markdown table with t/s and
the ratio tilellm / llama.cpp.

    python scripts/bench_peer.py                       # all six types, all kernel backends
    python scripts/bench_peer.py --types q4_0,q8_0 --backends avx512 --reps 5

GEMM mode (--gemm): GFLOP/s per backend x type at the LLM shapes (m x k) for n tokens, numpy
float32 matmul in the same run, and % of the measured FP32 FMA peak (tl_fma_peak). Wall-clock
GFLOP/s plus "per CPU" GFLOP/s (flops / (process CPU time / threads)): on a loaded machine the
latter shows what the kernel does when it runs, the former what a user sees.

    python scripts/bench_peer.py --gemm --quick        # 3 shapes, n = 1, 512
    python scripts/bench_peer.py --gemm                # 8 shapes, n = 1, 16, 128, 512

--json FILE saves everything; --plot DIR writes the PNGs (needs matplotlib, a bench-only
dependency). Types: f32 f16 bf16 q8_0 q4_0 q4_1 (default), q5_1 iq4_nl iq4_xs q2_k q3_k.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")  # the default set
# --types may also name these (bench models quantized by tilellm.quant.quantize; q2_k, q3_k, iq4_*: its own
# quantizers, not llama-quantize's)
MORE_TYPES = ("q5_1", "iq4_nl", "iq4_xs", "q2_k", "q3_k")
ALL_TYPES = TYPES + MORE_TYPES
GEMM_SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632), (4096, 4096), (11008, 4096), (7168, 2048),
               (2112, 7168), (24576, 1536)]
GEMM_NS = [1, 16, 128, 512]
QUICK_SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632)]
QUICK_NS = [1, 512]
THREADS = 2


def use_peer_build(isa: str, error) -> None:
    """Make the next `import llama_cpp` load the llama.cpp built by scripts/build_peer.sh ISA (.peers/ISA);
    `error(message)` (an argparse error) when there is no such build."""
    lib = Path(__file__).resolve().parents[1] / ".peers" / isa / "llama_cpp" / "lib"
    if not lib.is_dir():
        error(f"no peer build at {lib.parent.parent}: run scripts/build_peer.sh {isa}")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib)  # read by llama_cpp at import
    sys.path.insert(0, str(lib.parent.parent))


def rates_row(pp: list[float], tg: list[float]) -> dict:
    """A row's rates: best (the sample least disturbed by other processes), median and every sample, pp and tg."""
    return {"pp": max(pp), "pp_median": statistics.median(pp), "pp_samples": pp,
            "tg": max(tg), "tg_median": statistics.median(tg), "tg_samples": tg}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def kernel_backends() -> list[str]:
    from tilellm import backend

    return [b for b in backend.available() if b not in ("reference", "portable")]


# ------------------------------------------------------------------------------------ model mode

def synth_path(d: Path, t: str) -> Path:
    from make_synthetic_gguf import write_synthetic_gguf

    p = d / f"tinyllama-4l-{t}.gguf"
    if not p.exists():
        log(f"writing {p} ...")
        tmp = p.with_suffix(".tmp")
        write_synthetic_gguf(tmp, wtype=t, ctx=2048, seed=0)
        tmp.rename(p)
    return p


class Peer:
    """llama.cpp via llama-cpp-python, as PEERS.md prescribes."""
    name = "llama.cpp"

    def __init__(self, path: Path):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=1024,
                         n_batch=512, n_ubatch=512, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def reset(self):
        self.llm.reset()

    def eval(self, toks):
        self.llm.eval(toks)

    def close(self):
        self.llm.close() if hasattr(self.llm, "close") else None
        del self.llm


class Ours:
    def __init__(self, path: Path, be: str):
        from tilellm.llm.api import load

        self.name = be
        self.m = load(str(path), n_ctx=1024, n_threads=THREADS, n_batch=512, backend=be)
        self.n_vocab = self.m.n_vocab

    def reset(self):
        self.m.reset()

    def eval(self, toks):
        self.m.eval(toks)

    def close(self):
        self.m.close()


# llama.cpp's ggml workers keep spinning ~200 ms after each eval (measured: process CPU = wall for 100 ms
# of sleep after an eval, 197 ms of 500 ms); tilellm's pool spins ~2-5 ms. An engine timed within that
# window shares the 2 CPUs with the other's spinning thread, so every timed segment starts after a pause.
SETTLE_S = 0.3


def settle() -> None:
    time.sleep(SETTLE_S)


def time_pp(e, toks) -> float:
    e.reset()
    settle()
    t0 = time.perf_counter()
    e.eval(toks)
    return time.perf_counter() - t0


def time_tg(e, prompt, toks) -> float:
    e.reset()
    e.eval(prompt)
    settle()
    t0 = time.perf_counter()
    for t in toks:
        e.eval([t])
    return time.perf_counter() - t0


def time_tg_sliced(engines, prompt, toks, slice_len: int) -> list[float]:
    """tg of every engine on the same tokens, interleaved: each generates `slice_len` tokens of its own
    context in turn until all have done len(toks). The VM's memory bandwidth drifts between regimes over
    seconds (measured: 45 vs 75 GB/s for the same gemv), so engines timed in alternating slices see the
    same mix of them; returns each engine's seconds for all of toks (slices summed)."""
    for e in engines:
        e.reset()
        e.eval(prompt)
    spent = [0.0] * len(engines)
    for s0 in range(0, len(toks), slice_len):
        for i, e in enumerate(engines):
            settle()
            t0 = time.perf_counter()
            for t in toks[s0:s0 + slice_len]:
                e.eval([t])
            spent[i] += time.perf_counter() - t0
    return spent


def model_bench(types, backends, reps, tg_reps, n_pp, n_tg, d: Path, peer_ok: bool, tg_slice: int = 16) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for t in types:
        path = synth_path(d, t)
        engines = []
        if peer_ok:
            try:
                engines.append(Peer(path))
            except Exception as e:  # noqa: BLE001
                log(f"llama.cpp failed to load {path.name}: {e}")
        for be in backends:
            engines.append(Ours(path, be))
        vocab = engines[0].n_vocab

        def toks(n):
            ids = rng.integers(3, vocab, n).tolist()
            return ids

        pp = {e.name: [] for e in engines}
        tg = {e.name: [] for e in engines}
        for e in engines:  # warm-up (page cache, repacking, thread pools)
            time_pp(e, toks(n_pp))
            time_tg(e, toks(8), toks(8))
        for _ in range(reps):
            ids = [1] + toks(n_pp - 1)
            for e in engines:
                pp[e.name].append(n_pp / time_pp(e, ids))
        for _ in range(tg_reps):
            prompt, ids = [1] + toks(7), toks(n_tg)
            for e, sec in zip(engines, time_tg_sliced(engines, prompt, ids, tg_slice)):
                tg[e.name].append(n_tg / sec)
        for e in engines:
            # best = the sample least disturbed by other processes (rounds are interleaved, so the
            # best samples of peer and ours come from comparable moments); median kept too
            row = {"type": t, "engine": e.name, **rates_row(pp[e.name], tg[e.name])}
            rows.append(row)
            log(f"{t:5s} {e.name:10s} pp{n_pp} {row['pp']:8.1f} t/s  tg{n_tg} {row['tg']:7.1f} t/s "
                f"(pp samples {', '.join(f'{v:.0f}' for v in pp[e.name])})")
        for e in engines:
            e.close()
        del engines
    return rows


def model_table(rows, n_pp, n_tg) -> str:
    peer = {r["type"]: r for r in rows if r["engine"] == "llama.cpp"}
    out = ["Best of the interleaved rounds (median in parentheses); ratio = best / best (median / median).", "",
           f"| type | backend | pp{n_pp} t/s | llama.cpp pp{n_pp} | ratio "
           f"| tg{n_tg} t/s | llama.cpp tg{n_tg} | ratio |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["engine"] == "llama.cpp":
            continue
        p = peer.get(r["type"])
        if p:
            out.append(f"| {r['type']} | {r['engine']} | {r['pp']:.0f} ({r['pp_median']:.0f}) | {p['pp']:.0f} "
                       f"({p['pp_median']:.0f}) | **{r['pp'] / p['pp']:.2f}x** "
                       f"({r['pp_median'] / p['pp_median']:.2f}x) | "
                       f"{r['tg']:.1f} ({r['tg_median']:.1f}) | {p['tg']:.1f} ({p['tg_median']:.1f}) | "
                       f"**{r['tg'] / p['tg']:.2f}x** ({r['tg_median'] / p['tg_median']:.2f}x) |")
        else:
            out.append(f"| {r['type']} | {r['engine']} | {r['pp']:.0f} ({r['pp_median']:.0f}) | – | – | "
                       f"{r['tg']:.1f} ({r['tg_median']:.1f}) | – | – |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------- GEMM mode

def time_fn(fn, min_s=0.25, max_reps=200):
    """(best wall seconds, process-CPU seconds of that best batch) per call."""
    settle()  # OpenBLAS's threads (numpy's matmul) also spin for a while after a call
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(1, min_s / 3 / one)))
    best = (float("inf"), 0.0)
    for _ in range(3):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            fn()
        w, c = (time.perf_counter() - w0) / reps, (time.process_time() - c0) / reps
        if w < best[0]:
            best = (w, c)
    return best


def gemm_bench(types, backends, shapes, ns) -> tuple[list[dict], float]:
    from tilellm import kernels
    from tilellm.quant import GGMLType, quantize

    peaks = {}
    for be in backends:
        peaks[be] = kernels.load(be, n_threads=THREADS).fma_peak(THREADS)
        log(f"FMA peak ({be}, {THREADS} threads, CPU-time based): {peaks[be]:.1f} GFLOP/s")
    peak = max(peaks.values()) if peaks else float("nan")
    rows = []
    rng = np.random.default_rng(0)
    for m, k in shapes:
        wf = (rng.standard_normal((m, k)) / np.sqrt(k)).astype(np.float32)
        for n in ns:
            x = rng.standard_normal((n, k)).astype(np.float32)
            out = np.empty((n, m), np.float32)
            w_t = np.ascontiguousarray(wf.T)
            wall, cpu = time_fn(lambda: np.matmul(x, w_t, out=out))
            fl = 2.0 * m * n * k
            rows.append({"engine": "numpy", "type": "f32", "m": m, "k": k, "n": n, "gflops": fl / wall / 1e9,
                         "gflops_cpu": fl / max(cpu, 1e-9) * THREADS / 1e9})
            log(f"numpy f32 {m}x{k} n={n}: {rows[-1]['gflops']:.1f} GFLOP/s")
        for t in types:
            tt = GGMLType[t.upper()]
            raw = quantize(wf, tt)
            for be in backends:
                lib = kernels.load(be, n_threads=THREADS)
                for n in ns:
                    x = rng.standard_normal((n, k)).astype(np.float32)
                    p = lib.prepare(tt, x)
                    out = np.empty((n, m), np.float32)
                    wall, cpu = time_fn(lambda: lib.gemm(tt, raw, k, p, out))
                    fl = 2.0 * m * n * k
                    r = {"engine": be, "type": t, "m": m, "k": k, "n": n, "gflops": fl / wall / 1e9,
                         "gflops_cpu": fl / max(cpu, 1e-9) * THREADS / 1e9}
                    r["pct_peak"] = 100 * r["gflops"] / peaks[be]
                    r["pct_peak_cpu"] = 100 * r["gflops_cpu"] / peaks[be]
                    rows.append(r)
                    log(f"{be} {t} {m}x{k} n={n}: {r['gflops']:.1f} GFLOP/s wall, {r['gflops_cpu']:.1f} per CPU "
                        f"({r['pct_peak_cpu']:.0f}% of peak)")
            raw = None  # free the quantized copy before the next type
    return rows, peak


def gemm_table(rows, peak) -> str:
    gtypes = [t for t in ALL_TYPES if any(r["type"] == t for r in rows)]
    out = [f"FP32 FMA peak (tl_fma_peak, {THREADS} threads): {peak:.0f} GFLOP/s. Cells: wall GFLOP/s "
           f"(per-CPU GFLOP/s, % of peak per CPU).", "",
           "| m×k | n | engine | " + " | ".join(gtypes) + " |", "|---|---:|---|" + "---:|" * len(gtypes)]
    keys = sorted({(r["m"], r["k"], r["n"]) for r in rows}, key=lambda s: (GEMM_SHAPES.index((s[0], s[1]))
                                                                       if (s[0], s[1]) in GEMM_SHAPES else 99, s[2]))
    engines = []
    for r in rows:
        if r["engine"] not in engines:
            engines.append(r["engine"])
    for m, k, n in keys:
        for e in engines:
            cells = []
            for t in gtypes:
                rr = [r for r in rows if (r["m"], r["k"], r["n"], r["engine"], r["type"]) == (m, k, n, e, t)]
                if not rr:
                    cells.append("")
                    continue
                r = rr[0]
                if e == "numpy":
                    cells.append(f"{r['gflops']:.0f}")
                else:
                    cells.append(f"{r['gflops']:.0f} ({r['gflops_cpu']:.0f}, {r['pct_peak_cpu']:.0f}%)")
            if any(cells):
                out.append(f"| {m}×{k} | {n} | {e} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- plots

def _bars(ax, labels: list[str], series: dict[str, list[float]]) -> None:
    """Grouped bars: one group per label, one bar per series in each group."""
    w = 0.8 / max(len(series), 1)
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(np.arange(len(labels)) + i * w, vals, w, label=name)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2, labels)


def plot(model_rows, gemm_rows, peak, d: Path, n_pp, n_tg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d.mkdir(parents=True, exist_ok=True)
    if model_rows:
        engines = []
        for r in model_rows:
            if r["engine"] not in engines:
                engines.append(r["engine"])
        types = [t for t in ALL_TYPES if any(r["type"] == t for r in model_rows)]
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        for ax, key, title in ((axes[0], "pp", f"pp{n_pp}"), (axes[1], "tg", f"tg{n_tg}")):
            _bars(ax, types, {e: [next((r[key] for r in model_rows if r["type"] == t and r["engine"] == e), 0)
                                  for t in types] for e in engines})
            ax.set_ylabel("tokens/s")
            ax.set_title(f"{title}, {THREADS} threads, TinyLlama-shaped 4 layers")
            ax.legend()
        fig.tight_layout()
        fig.savefig(d / "pp_tg.png", dpi=110)
        plt.close(fig)
    if gemm_rows:
        ns = sorted({r["n"] for r in gemm_rows})
        nmax = max(ns)
        shape = max({(r["m"], r["k"]) for r in gemm_rows}, key=lambda s: (s == (5632, 2048), s))
        engines = [e for e in dict.fromkeys(r["engine"] for r in gemm_rows) if e != "numpy"]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        at_shape = [r for r in gemm_rows if r["n"] == nmax and (r["m"], r["k"]) == shape]
        _bars(ax, TYPES, {f"tilellm {e}": [next((r["gflops_cpu"] for r in at_shape if r["engine"] == e
                                                 and r["type"] == t), 0) for t in TYPES] for e in engines})
        npv = next((r["gflops_cpu"] for r in gemm_rows if r["engine"] == "numpy" and r["n"] == nmax
                    and (r["m"], r["k"]) == shape), None)
        if npv:
            ax.axhline(npv, color="gray", ls="--", label="numpy f32 matmul")
        ax.axhline(peak, color="red", ls=":", label="FP32 FMA peak")
        ax.set_ylabel("GFLOP/s (per CPU)")
        ax.set_title(f"GEMM m×k = {shape[0]}×{shape[1]}, n = {nmax}, {THREADS} threads")
        ax.legend()
        fig.tight_layout()
        fig.savefig(d / "gemm.png", dpi=110)
        plt.close(fig)


# ------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--backends", default=None, help="tilellm kernel backends (default: all runnable but portable)")
    ap.add_argument("--reps", type=int, default=5, help="timed pp rounds (default 5)")
    ap.add_argument("--tg-reps", type=int, default=3, help="timed tg rounds (default 3)")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--tg-slice", type=int, default=16,
                    help="tg: engines take turns generating this many tokens each (default 16; --tg-slice 128 = one "
                         "whole tg run per engine in turn, as runs 1-7 did)")
    ap.add_argument("--gemm", action="store_true", help="GEMM mode instead of the model bench")
    ap.add_argument("--quick", action="store_true", help="GEMM: 3 shapes, n = 1 and 512")
    ap.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    ap.add_argument("--peer-isa", default=None, choices=["native", "avx2"],
                    help="use the llama.cpp built by scripts/build_peer.sh ISA (.peers/ISA) instead of the installed "
                         "llama-cpp-python's libraries; avx2 = the AVX2-only build, the fair peer of a run capped "
                         "with TILELLM_CPU_CAP=avx2")
    ap.add_argument("--dir", default="/tmp/tilellm-bench", help="where the synthetic GGUFs go")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="directory for PNGs (e.g. docs/bench)")
    a = ap.parse_args(argv)

    types = [t.strip() for t in a.types.split(",") if t.strip()]
    bad = [t for t in types if t not in ALL_TYPES]
    if bad:
        ap.error(f"unknown types {bad}")
    backends = [b.strip() for b in a.backends.split(",")] if a.backends else kernel_backends()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    peer_ok = not a.no_peer
    if peer_ok and a.peer_isa:
        use_peer_build(a.peer_isa, ap.error)
    if peer_ok:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            log("llama-cpp-python is not installed (see PEERS.md / BENCHMARKS.md): no peer column")
            peer_ok = False

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; threads {THREADS}; backends {', '.join(backends)}; "
          f"peer: {a.peer_isa or 'installed llama-cpp-python'}")
    res = {"threads": THREADS, "backends": backends}
    model_rows, gemm_rows, peak = [], [], float("nan")
    if a.gemm:
        shapes, ns = (QUICK_SHAPES, QUICK_NS) if a.quick else (GEMM_SHAPES, GEMM_NS)
        gemm_rows, peak = gemm_bench(types, backends, shapes, ns)
        print(gemm_table(gemm_rows, peak))
        res.update(gemm=gemm_rows, fma_peak=peak)
    else:
        model_rows = model_bench(types, backends, a.reps, a.tg_reps, a.pp, a.tg, d, peer_ok, max(1, a.tg_slice))
        print(model_table(model_rows, a.pp, a.tg))
        res.update(model=model_rows)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.plot:
        plot(model_rows, gemm_rows, peak, Path(a.plot), a.pp, a.tg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
