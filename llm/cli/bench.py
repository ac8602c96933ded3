"""``llm-bench``: llama-bench-style throughput of a model, and a GEMM mode for the kernels.

Model mode (mirrors llama-bench)::

    llm-bench -m model.gguf -p 512 -n 128 -r 5 -t 1,2 --backend portable,reference -o md

For every model × backend × threads × n_batch: ``pp<P>`` evaluates P random tokens after a reset
(the model splits them into batches of n_batch) and ``tg<N>`` evaluates N single tokens after a
reset. ``-d D`` (comma list, like llama-bench's ``--n-depth``) runs every test after D random tokens
already in the context: the depth fill is not timed, and it is evaluated once per depth and then
restored from a saved copy of its KV rows (as llama-bench restores its cached state); rows are
labelled ``pp512 @ d1024``. One warm-up run per test (``--no-warmup`` skips it), then ``-r`` timed repetitions;
per-rep t/s = 1e9·tokens/ns, reported as mean ± sample standard deviation. Tokenization and
sampling are not measured. JSON fields follow llama-bench (``model_type, model_size,
model_n_params, n_batch, n_threads, n_prompt, n_gen, avg_ns, stddev_ns, avg_ts, stddev_ts,
samples_ns, samples_ts``) plus ``backend``.

GEMM mode::

    llm-bench --gemm --types q4_0,q8_0 --shapes 2048x2048,11008x4096 --n 1,16,128,512 --backend all

For every weight type × shape (m×k) × n × backend × threads: Y[n, m] = X[n, k] · W[m, k]ᵀ with
random weights quantized by ``tilellm.quant.quantize``; GFLOP/s = 2·m·n·k / time (median of the
reps after one warm-up; calls shorter than ``--min-time`` are repeated inside a sample), the same
product in numpy float32 (``numpy`` rows, at the BLAS's own thread count) for comparison, and every
figure as a percentage of the FP32 FMA peak at that thread count (the kernels' ``tl_fma_peak``, or
a numpy-based estimate labelled as such). ``rel_err`` (JSON) checks each result against numpy.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from tilellm.backend import default_threads
from tilellm.llm.cli.common import Parser, UsageError, guarded_main

__all__ = ["main", "run_model_bench", "run_gemm_bench", "fma_peak", "DEFAULT_SHAPES", "QUICK"]

# LLaMA-1B (TinyLlama), LLaMA-7B and DeepSeek-V3 projection shapes (m = output rows, k = row length)
DEFAULT_SHAPES = ((2048, 2048), (5632, 2048), (2048, 5632), (4096, 4096), (11008, 4096),
                  (7168, 2048), (2112, 7168), (24576, 1536))
DEFAULT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
DEFAULT_N = (1, 16, 128, 512)
# --quick: a subset small enough for tests and smoke runs
QUICK: dict[str, Any] = {"types": ("f32", "q8_0", "q4_0"), "shapes": ((256, 256), (512, 256)), "n": (1, 16), "reps": 2,
         "min_sample_s": 0.002}


# ----------------------------------------------------------------------------- helpers

def _int_list(lo: int) -> Callable[[str], list[int]]:
    def conv(s: str) -> list[int]:
        out = []
        for part in s.split(","):
            part = part.strip()
            try:
                v = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"invalid integer {part!r} in {s!r}") from None
            if v < lo:
                raise argparse.ArgumentTypeError(f"values must be >= {lo}, got {v}")
            out.append(v)
        return out
    return conv


def _str_list(s: str) -> list[str]:
    out = [p.strip() for p in s.split(",") if p.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"empty list {s!r}")
    return out


def _pg_list(s: str) -> tuple[int, int]:
    parts = s.split(",")
    try:
        pp, tg = (int(x) for x in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-pg takes PP,TG (two integers), got {s!r}") from None
    if pp < 0 or tg < 0:
        raise argparse.ArgumentTypeError(f"-pg values must be >= 0, got {s!r}")
    return pp, tg


def _shape_list(s: str) -> list[tuple[int, int]]:
    out = []
    for part in _str_list(s):
        a, sep, b = part.lower().replace("×", "x").partition("x")
        try:
            m, k = int(a), int(b)
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {part!r} is not MxK (e.g. 4096x4096)") from None
        if not sep or m < 1 or k < 1:
            raise argparse.ArgumentTypeError(f"shape {part!r} is not MxK with M, K >= 1")
        out.append((m, k))
    return out


def _fmt_size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.2f} K"


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    return float(statistics.fmean(xs)), float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def _cpu_info() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _backend_names(spec: Sequence[str]) -> list[str]:
    from tilellm import backend as backends

    if any(s.lower() == "all" for s in spec):
        return backends.available()
    return list(spec)


# ----------------------------------------------------------------------------- model mode

@dataclass
class ModelResult:
    """One llama-bench row (JSON field names as llama-bench's)."""

    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    backend: str
    n_batch: int
    n_threads: int
    n_prompt: int
    n_gen: int
    n_depth: int
    avg_ns: float
    stddev_ns: float
    avg_ts: float
    stddev_ts: float
    samples_ns: list[int] = field(default_factory=list)
    samples_ts: list[float] = field(default_factory=list)
    cpu_info: str = ""
    test_time: str = ""

    @property
    def test(self) -> str:
        if self.n_prompt and self.n_gen:
            name = f"pp{self.n_prompt}+tg{self.n_gen}"
        else:
            name = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return f"{name} @ d{self.n_depth}" if self.n_depth else name


def _fill_depth(model: Any, n_depth: int, tokens: Callable[[int], list[int]], states: dict[int, Any]) -> None:
    """Reset, then put ``n_depth`` tokens in the context (llama-bench's -d), untimed: evaluated once per depth and
    saved, restored from ``states`` afterwards (llama-bench's cached depth state: a depth of 4096 is not
    re-evaluated for every repetition)."""
    model.reset()
    if n_depth <= 0:
        return
    state = states.get(n_depth)
    if state is not None:
        model.load_state(state)
        return
    model.eval(tokens(n_depth))
    if hasattr(model, "save_state"):
        states.clear()  # one depth's rows at a time
        states[n_depth] = model.save_state()


def _time_test(model: Any, prompt: list[int], gen: list[int]) -> int:
    """Nanoseconds to evaluate ``prompt`` in one call then ``gen`` one token at a time (after `_fill_depth`)."""
    t0 = time.perf_counter_ns()
    if prompt:
        model.eval(prompt)
    for t in gen:
        model.eval([t])
    return time.perf_counter_ns() - t0


def run_model_bench(
    model_path: str,
    n_prompt: Sequence[int] = (512,),
    n_gen: Sequence[int] = (128,),
    reps: int = 5,
    threads: Sequence[int] | None = None,
    backends: Sequence[str] = ("auto",),
    n_batch: Sequence[int] = (512,),
    warmup: bool = True,
    seed: int = 0,
    on_result: Callable[[ModelResult], None] | None = None,
    n_pg: Sequence[tuple[int, int]] = (),
    n_depth: Sequence[int] = (0,),
    progress: TextIO | None = None,
) -> list[ModelResult]:
    """Run the pp/tg (and pp+tg: ``n_pg``) tests at every depth; returns one ModelResult per configuration.

    ``progress`` receives a llama-bench-style line before each test.
    """
    from ..api import load

    threads = list(threads) if threads else [default_threads()]
    n_depth = list(n_depth) or [0]
    n_ctx = max([*n_prompt, *n_gen, *(p + g for p, g in n_pg), 1]) + max(n_depth)
    rng = np.random.default_rng(seed)
    results: list[ModelResult] = []
    for be in _backend_names(backends):
        for t in threads:
            for nb in n_batch:
                with load(model_path, n_ctx=n_ctx, n_threads=t, n_batch=nb, backend=be, tokenizer=None) as model:
                    bos = getattr(model.tokenizer, "bos_id", None)

                    states: dict[int, Any] = {}

                    def random_tokens(n: int) -> list[int]:
                        ids = rng.integers(0, model.n_vocab, n).tolist()
                        if bos is not None and ids:
                            ids[0] = int(bos)  # like a real prompt
                        return ids

                    tests: list[tuple[int, int, int]] = [
                        (p, g, d) for d in n_depth for p, g in
                        [(p, 0) for p in n_prompt if p > 0] + [(0, g) for g in n_gen if g > 0] +
                        [(p, g) for p, g in n_pg if p + g > 0]]
                    for i_test, (p, g, d) in enumerate(tests):
                        if progress is not None:
                            name = f"pp{p}+tg{g}" if p and g else (f"pp{p}" if p else f"tg{g}")
                            print(f"llm-bench: test {i_test + 1}/{len(tests)} ({name}, depth {d}, backend {be}, "
                                  f"{t} threads, n_batch {nb})", file=progress, flush=True)
                        if warmup:
                            _fill_depth(model, d, random_tokens, states)
                            _time_test(model, random_tokens(p), random_tokens(1 if g else 0))
                        samples = []
                        for _ in range(reps):
                            _fill_depth(model, d, random_tokens, states)
                            samples.append(_time_test(model, random_tokens(p), random_tokens(g)))
                        n_tok = p + g
                        ts = [n_tok * 1e9 / ns for ns in samples]
                        avg_ns, sd_ns = _mean_std(samples)
                        avg_ts, sd_ts = _mean_std(ts)
                        r = ModelResult(
                            model_filename=os.path.basename(model_path), model_type=model.desc,
                            model_size=model.model_size, model_n_params=model.n_params, backend=model.backend,
                            n_batch=nb, n_threads=model.n_threads, n_prompt=p, n_gen=g, n_depth=d,
                            avg_ns=avg_ns, stddev_ns=sd_ns, avg_ts=avg_ts, stddev_ts=sd_ts,
                            samples_ns=[int(s) for s in samples], samples_ts=ts, cpu_info=_cpu_info(),
                            test_time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
                        results.append(r)
                        if on_result:
                            on_result(r)
    return results


MD_HEADER = ("| model | size | params | backend | threads | test | t/s |\n"
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |")


def format_model_row(r: ModelResult) -> str:
    """One markdown row like llama-bench's."""
    return (f"| {r.model_type} | {_fmt_size(r.model_size)} | {_fmt_params(r.model_n_params)} | {r.backend} | "
            f"{r.n_threads} | {r.test} | {r.avg_ts:.2f} ± {r.stddev_ts:.2f} |")


_FIELDS = [f.name for f in fields(ModelResult)]
_SQL_TYPES = {"int": "INTEGER", "float": "REAL"}
_SQL_CREATE = ("CREATE TABLE IF NOT EXISTS test (\n" + ",\n".join(
    f"  {f.name} {_SQL_TYPES.get(str(f.type), 'TEXT')}" for f in fields(ModelResult)) + "\n);")


def _cell(v: Any) -> str:
    """A value as llama-bench writes it in CSV/SQL: lists space-separated, text quoted."""
    if isinstance(v, list):
        v = " ".join(str(x) for x in v)
    return v if isinstance(v, str) else str(v)


def _csv_row(r: ModelResult) -> str:
    """One CSV line (fields in ``ModelResult`` order; every value double-quoted, like llama-bench)."""
    return ",".join('"' + _cell(v).replace('"', '""') + '"' for v in asdict(r).values())


def _sql_row(r: ModelResult) -> str:
    """One ``INSERT`` statement for the table ``_SQL_CREATE`` makes (llama-bench's sql output)."""
    vals = []
    for f in fields(ModelResult):
        v = getattr(r, f.name)
        vals.append(str(v) if str(f.type) in _SQL_TYPES else "'" + _cell(v).replace("'", "''") + "'")
    return f"INSERT INTO test ({', '.join(_FIELDS)}) VALUES ({', '.join(vals)});"


# ----------------------------------------------------------------------------- peak

def _kernel_fma_peak(n_threads: int) -> tuple[float, str] | None:
    """``tl_fma_peak`` of the widest kernel variant this CPU runs (None if there is none)."""
    try:
        from tilellm import backend as backends
        from tilellm import kernels

        # available() lists only variants this CPU can execute, widest ISA first; calling a
        # compiled-but-unsupported variant (e.g. amx here without AMX) would fault
        runnable = [v for v in backends.available() if v != "reference"]
        if not runnable:
            return None
        lib = kernels.load(runnable[0])
        fn = getattr(lib, "fma_peak", None)
        if fn is None:
            return None
        return float(fn(n_threads)), f"measured: tl_fma_peak ({runnable[0]}, {n_threads} threads)"
    except Exception:  # noqa: BLE001 - the kernels are optional here; fall back to the estimate
        return None


_NUMPY_PEAK: dict[int, float] = {}


def _numpy_sgemm_gflops(size: int = 1024, reps: int = 5) -> float:
    """Best-of-reps GFLOP/s of a square numpy float32 matmul (BLAS, its own thread count)."""
    if size not in _NUMPY_PEAK:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        c = np.empty((size, size), np.float32)
        np.matmul(a, b, out=c)  # warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        _NUMPY_PEAK[size] = 2.0 * size ** 3 / best / 1e9
    return _NUMPY_PEAK[size]


def fma_peak(n_threads: int) -> tuple[float, str]:
    """FP32 FMA peak in GFLOP/s at ``n_threads`` and how it was obtained.

    Measured by the kernels' ``tl_fma_peak`` (an FMA-only loop) when a kernel variant is available;
    otherwise an *estimate*: numpy's sgemm at 1024³ (all cores the BLAS uses)
    scaled to ``n_threads`` of the CPUs we may run on. A good BLAS reaches 50–90 % of the true peak,
    so percentages against the estimate overstate efficiency.
    """
    got = _kernel_fma_peak(n_threads)
    if got is not None:
        return got
    try:
        n_cpu = len(os.sched_getaffinity(0))
    except AttributeError:
        n_cpu = os.cpu_count() or 1
    est = _numpy_sgemm_gflops() * min(n_threads, n_cpu) / n_cpu
    return est, (f"estimate: numpy sgemm 1024^3 scaled to {n_threads}/{n_cpu} CPUs "
                 f"(lower bound of the true FMA peak; tl_fma_peak not available)")


# ----------------------------------------------------------------------------- gemm mode

@dataclass
class GemmResult:
    """One GEMM measurement (``backend == "numpy"`` rows are the float32 numpy baseline)."""

    backend: str
    n_threads: int
    type: str
    m: int
    k: int
    n: int
    reps: int
    median_ns: float
    samples_ns: list[int]
    gflops: float
    peak_gflops: float
    pct_peak: float
    numpy_gflops: float
    vs_numpy: float
    rel_err: float = 0.0  # ||Y - X·dequant(W)ᵀ|| / ||X·dequant(W)ᵀ||: a kernel that is fast but wrong shows here


BLAS_SETTLE_S = 0.3


def _time_call(fn: Callable[[], Any], reps: int, warmup: bool, min_sample_s: float = 0.02) -> list[int]:
    """Per-call ns, one value per rep; calls shorter than ``min_sample_s`` are repeated inside a
    sample (timeit-style) so timer resolution and scheduling jitter do not dominate."""
    t0 = time.perf_counter_ns()
    fn()  # the warm-up, also used to size the inner loop
    first = max(time.perf_counter_ns() - t0, 1)
    inner = max(1, int(min_sample_s * 1e9 // first))
    out = [] if warmup else [first]
    while len(out) < reps:
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter_ns() - t0) // inner)
    return out


def run_gemm_bench(
    types: Sequence[str] = DEFAULT_TYPES,
    shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES,
    ns: Sequence[int] = DEFAULT_N,
    backends: Sequence[str] = ("all",),
    threads: Sequence[int] | None = None,
    reps: int = 5,
    warmup: bool = True,
    seed: int = 0,
    on_result: Callable[[GemmResult], None] | None = None,
    min_sample_s: float = 0.02,
    log: TextIO | None = None,
) -> tuple[list[GemmResult], dict[int, tuple[float, str]]]:
    """Run the GEMM sweep; returns the rows and the peak used per thread count."""
    from tilellm import backend as backend_mod
    from tilellm.quant import TYPE_INFO, TensorView, quantize, type_from_any


    log = log or sys.stderr
    gtypes = [type_from_any(t) for t in types]
    threads = list(threads) if threads else [default_threads()]
    names = _backend_names(backends)
    bes = [(backend_mod.get(nm, t), t) for nm in names for t in threads]  # fail fast on a bad name
    peaks = {t: fma_peak(t) for t in threads}
    rng = np.random.default_rng(seed)
    rows: list[GemmResult] = []
    for m, k in shapes:
        w32 = rng.standard_normal((m, k), dtype=np.float32) * np.float32(1 / np.sqrt(k))
        views: dict[Any, Any] = {}
        deq: dict[Any, np.ndarray] = {}
        for gt in gtypes:
            if k % TYPE_INFO[gt].block_size:
                print(f"note: skipping {gt.name} for {m}x{k}: k is not a multiple of {TYPE_INFO[gt].block_size}",
                      file=log)
                continue
            views[gt] = TensorView(f"w{m}x{k}", (k, m), gt, quantize(w32, gt).reshape(m, -1))
            deq[gt] = views[gt].dequantize()
        for n in ns:
            x = rng.standard_normal((n, k), dtype=np.float32)
            out = np.empty((n, m), np.float32)
            flops = 2.0 * m * n * k
            np_s = _time_call(lambda: np.matmul(x, w32.T, out=out), reps, warmup, min_sample_s)
            np_gf = flops / statistics.median(np_s)
            # numpy's OpenBLAS threads keep spinning for a while after a call and would share the CPUs with
            # the kernels timed next (the first cell of a run measured 40-46 % of peak instead of ~88 %)
            time.sleep(BLAS_SETTLE_S)
            for t in threads:
                peak = peaks[t][0]
                r = GemmResult("numpy", t, "f32", m, k, n, reps, float(statistics.median(np_s)), np_s, np_gf,
                               peak, 100.0 * np_gf / peak if peak else 0.0, np_gf, 1.0)
                rows.append(r)
                if on_result:
                    on_result(r)
            for be, t in bes:
                peak = peaks[t][0]
                for gt, wv in views.items():
                    if not be.supports(gt):
                        continue
                    samples = _time_call(lambda: be.matmul(wv, x, out), reps, warmup, min_sample_s)
                    want = x @ deq[gt].T
                    time.sleep(BLAS_SETTLE_S)  # that matmul's BLAS threads spin too (f16 after f32: 39 % of peak)
                    err = float(np.linalg.norm(out - want) / max(float(np.linalg.norm(want)), 1e-30))
                    if not err < 3e-2:  # Q8 activations alone cost ~0.5 %
                        print(f"warning: {be.name} {gt.name} {m}x{k} n={n}: relative error {err:.3g} vs numpy",
                              file=log)
                    med = float(statistics.median(samples))
                    gf = flops / med
                    r = GemmResult(be.name, t, gt.name.lower(), m, k, n, reps, med, samples, gf, peak,
                                   100.0 * gf / peak if peak else 0.0, np_gf, gf / np_gf if np_gf else 0.0, err)
                    rows.append(r)
                    if on_result:
                        on_result(r)
    return rows, peaks


GEMM_HEADER = ("| backend | threads | type | m | k | n | GFLOP/s | % peak | vs numpy |\n"
               "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def format_gemm_row(r: GemmResult) -> str:
    return (f"| {r.backend} | {r.n_threads} | {r.type} | {r.m} | {r.k} | {r.n} | {r.gflops:.1f} | "
            f"{r.pct_peak:.1f} | {r.vs_numpy:.2f}x |")


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="llm-bench", description="Benchmark tilellm like llama-bench (model mode) or its GEMMs (--gemm).")
    p.add_argument("-m", "--model", action="append", default=[], help="model file (repeatable or comma list)")
    p.add_argument("-p", "--n-prompt", type=_int_list(0), default=[512], help="prompt tokens per pp test (default 512)")
    p.add_argument("-n", "--n-gen", type=_int_list(0), default=[128], help="tokens per tg test (default 128)")
    p.add_argument("-b", "--batch-size", type=_int_list(1), default=[512], help="n_batch (default 512)")
    p.add_argument("-r", "--repetitions", type=_int_list(1), default=None, help="timed repetitions (default 5)")
    p.add_argument("-t", "--threads", type=_int_list(1), default=None, help="threads (default: physical cores)")
    p.add_argument("--backend", type=_str_list, default=None,
                   help="backends, comma list or 'all' (default: auto; --gemm: all)")
    p.add_argument("-o", "--output", choices=("md", "json", "jsonl", "csv", "sql"), default="md",
                   help="output format: md, json, jsonl, csv, sql (default md)")
    p.add_argument("-pg", dest="n_pg", type=_pg_list, action="append", default=[], metavar="PP,TG",
                   help="a prompt + generation test: PP prompt tokens then TG generated (repeatable)")
    p.add_argument("-d", "--n-depth", type=_int_list(0), default=[0], metavar="N",
                   help="tokens already in the context before each test (default 0)")
    p.add_argument("--progress", action="store_true", help="print a line to stderr before each test")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the warm-up run")
    p.add_argument("--seed", type=int, default=0, help="seed for the random tokens / weights (default 0)")
    g = p.add_argument_group("GEMM mode")
    g.add_argument("--gemm", action="store_true", help="benchmark the matmul kernels instead of a model")
    g.add_argument("--types", type=_str_list, default=None, help=f"weight types (default {','.join(DEFAULT_TYPES)})")
    g.add_argument("--shapes", type=_shape_list, default=None,
                   help="MxK list (default: LLaMA-1B/7B and DeepSeek-V3 shapes)")
    g.add_argument("--n", dest="gemm_n", type=_int_list(1), default=None, help="tokens n (default 1,16,128,512)")
    g.add_argument("--quick", action="store_true", help="a small subset (tests, smoke runs)")
    g.add_argument("--min-time", type=float, default=None,
                   help="seconds per timed sample; short calls are repeated inside it (default 0.02)")
    return p


def _emit(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _run(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    p = build_parser()
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if a.repetitions is not None and len(a.repetitions) != 1:
        raise UsageError("-r takes a single value")
    md = a.output == "md"
    if a.gemm:
        if a.model:
            raise UsageError("--gemm does not take a model")
        if a.output not in ("md", "json"):
            raise UsageError(f"--gemm writes -o md or json, not {a.output}")
        from tilellm.quant import type_from_any

        types = a.types or (QUICK["types"] if a.quick else DEFAULT_TYPES)
        for t in types:
            type_from_any(t)  # ValueError names a bad type before any work
        shapes = a.shapes or (QUICK["shapes"] if a.quick else DEFAULT_SHAPES)
        ns = a.gemm_n or (QUICK["n"] if a.quick else DEFAULT_N)
        reps = a.repetitions[0] if a.repetitions else (QUICK["reps"] if a.quick else 5)
        header_done = False

        def on_row(r: GemmResult) -> None:
            nonlocal header_done
            if md:
                if not header_done:
                    _emit(out, GEMM_HEADER)
                    header_done = True
                _emit(out, format_gemm_row(r))

        rows, peaks = run_gemm_bench(types, shapes, ns, a.backend or ["all"], a.threads, reps, a.warmup, a.seed,
                                     on_row, a.min_time if a.min_time is not None else
                                     (QUICK["min_sample_s"] if a.quick else 0.02), err)
        if md:
            for t, (gf, how) in sorted(peaks.items()):
                _emit(out, f"\nFP32 FMA peak, {t} threads: {gf:.1f} GFLOP/s ({how})")
        else:
            doc = {"cpu_info": _cpu_info(),
                   "peak": [{"n_threads": t, "gflops": gf, "source": how} for t, (gf, how) in sorted(peaks.items())],
                   "results": [asdict(r) for r in rows]}
            _emit(out, json.dumps(doc, indent=2))
        return 0
    models = [m for spec in a.model for m in _str_list(spec)]
    if not models:  # the embedded default (Gemma 3 270M, the 'demo' extra), or a one-line install hint
        from .default_model import default_model_path

        models = [default_model_path(progress=err)]
    if a.gemm_n or a.shapes or a.types or a.quick:
        raise UsageError("--types/--shapes/--n/--quick need --gemm")
    reps = a.repetitions[0] if a.repetitions else 5
    streamed = {"md": format_model_row, "jsonl": lambda r: json.dumps(asdict(r)), "csv": _csv_row,
                "sql": _sql_row}.get(a.output)
    if md:
        _emit(out, MD_HEADER)
    elif a.output == "csv":
        _emit(out, ",".join(_FIELDS))
    elif a.output == "sql":
        _emit(out, _SQL_CREATE)
    results: list[ModelResult] = []
    for path in models:
        results += run_model_bench(path, a.n_prompt, a.n_gen, reps, a.threads, a.backend or ["auto"], a.batch_size,
                                   a.warmup, a.seed, (lambda r: _emit(out, streamed(r))) if streamed else None,
                                   n_pg=a.n_pg, n_depth=a.n_depth, progress=err if a.progress else None)
    if a.output == "json":
        _emit(out, json.dumps([asdict(r) for r in results], indent=2))
    return 0


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run ``llm-bench``; returns the exit status (errors are one ``error:`` line on stderr)."""
    return guarded_main(_run, argv, stdout or sys.stdout, stderr or sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
