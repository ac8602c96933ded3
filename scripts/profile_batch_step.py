#!/usr/bin/env python3
"""Where the time of a batched decode step goes (issue #15's throughput work), without HTTP.

1. GEMM: every matrix shape of the model at n = 1 (the gemv) and n = --slots, time and ratio.
2. Steps: `--slots` sequences decoding together through the server's BatchedRunner (one forward per step
   over one token of each), against one sequence alone; a step's time split into the matmuls (by
   weight), attention, the activation preparation (rms norm / swiglu into q8 rows), sampling (greedy
   argmax) and the rest (numpy glue, Python).

    python scripts/profile_batch_step.py                      # q4_0 synthetic, 8 slots, 2 threads
    python scripts/profile_batch_step.py --type q8_0 --slots 16
    python scripts/profile_batch_step.py -m model.gguf --slots 4
    python scripts/profile_batch_step.py -t 1 --clock cpu      # process CPU time: usable on a loaded machine

Medians of --steps steps after a warm-up; on a shared machine compare the ratios, not the times, or use
`--clock cpu` (the process's CPU time instead of wall time; with -t 1 that is the kernels' and the
Python's own time, whatever else runs; with more threads it also counts the workers' waits).
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


CLOCK: Callable[[], float] = time.perf_counter  # --clock cpu: time.process_time


def timed_gemm(be: Any, w: Any, n: int, reps: int) -> float:
    x = np.random.default_rng(0).standard_normal((n, w.k)).astype(np.float32)
    be.matmul(w, x)
    ts = []
    for _ in range(reps):
        t0 = CLOCK()
        be.matmul(w, x)
        ts.append(CLOCK() - t0)
    return statistics.median(ts)


def kind(name: str) -> str:
    return re.sub(r"^blk\.\d+\.", "", name).removesuffix(".weight")


class Probe:
    """Wraps backend methods to add their wall time to `acc[key]` (outermost call only)."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = defaultdict(float)
        self.depth = 0

    def wrap(self, obj: Any, attr: str, key: Callable[..., str]) -> None:
        f = getattr(obj, attr)

        def g(*a: Any, **kw: Any) -> Any:
            if self.depth:
                return f(*a, **kw)
            self.depth += 1
            t0 = CLOCK()
            try:
                return f(*a, **kw)
            finally:
                self.acc[key(*a, **kw)] += CLOCK() - t0
                self.depth -= 1
        setattr(obj, attr, g)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: the synthetic TinyLlama-shaped --type)")
    ap.add_argument("--type", default="q4_0", help="synthetic model's weight type (default q4_0)")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--dir", default="/tmp/tilellm-bench")
    ap.add_argument("--no-gemm", action="store_true", help="skip the per-shape GEMM table")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time (default) or the process's CPU time (use with -t 1 on a loaded machine)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    import tilellm
    from tilellm.llm.server.runner import BatchedRunner, BatchEntry

    if args.model:
        path = Path(args.model)
    else:
        from bench_peer import synth_path

        Path(args.dir).mkdir(parents=True, exist_ok=True)
        path = synth_path(Path(args.dir), args.type)
    model = tilellm.load(str(path), n_ctx=512, n_threads=args.threads, backend=args.backend)
    dec = model.decoder
    be = dec.backend
    print(f"{path.name}: backend {be.name}, {args.threads} threads, {args.slots} slots, {args.clock} time")

    if not args.no_gemm:
        seen: dict[tuple[Any, int, int], Any] = {}
        for name, t in dec.file.tensors.items():
            if len(t.shape) == 2 and name != "token_embd.weight" and be.supports(t.type):
                seen.setdefault((t.type, t.n_rows, t.k), t)
        print("\n| weight | type | m x k | n=1 ms | n=%d ms | ratio |\n|---|---|---|---|---|---|" % args.slots)
        for (typ, m, k), w in sorted(seen.items(), key=lambda kv: -kv[0][1] * kv[0][2]):
            t1 = timed_gemm(be, w, 1, 15)
            tn = timed_gemm(be, w, args.slots, 15)
            print(f"| {kind(w.name)} | {typ.name} | {m} x {k} | {1e3 * t1:.3f} | {1e3 * tn:.3f} | {tn / t1:.2f} |")

    rng = np.random.default_rng(1)
    prompts = [[int(v) for v in rng.integers(300, model.n_vocab, 16)] for _ in range(args.slots)]

    def decode_run(n_seq: int) -> tuple[list[float], dict[str, float]]:
        runner = BatchedRunner(model, n_seq)
        toks = [list(p) for p in prompts[:n_seq]]
        for s in range(n_seq):  # prefill each alone
            runner.forward([BatchEntry(s, 0, toks[s], True)])
        probe = Probe()
        for attr, key in (("matmul_many", lambda ws, x: "gemm " + "+".join(kind(w.name) for w in ws)),
                          ("matmul", lambda w, x, out=None: "gemm " + kind(w.name)),
                          ("attention", lambda *a, **k: "attention"),
                          ("prepare_rms_norm", lambda *a, **k: "act prepare"),
                          ("prepare_swiglu", lambda *a, **k: "act prepare"),
                          ("decode_layer", lambda *a, **k: "one-call decode layer")):
            probe.wrap(be, attr, key)
        times = []
        try:
            for step in range(args.steps + 3):
                if step == 3:
                    probe.acc.clear()
                t0 = CLOCK()
                ents = [BatchEntry(s, len(toks[s]) - 1, [toks[s][-1]], True) for s in range(n_seq)]
                out = runner.forward(ents)
                ts = CLOCK()
                nxt = [int(np.argmax(o)) for o in out]
                probe.acc["sampling (argmax)"] += CLOCK() - ts
                for s in range(n_seq):
                    toks[s].append(nxt[s])
                if step >= 3:
                    times.append(CLOCK() - t0)
        finally:
            for attr in ("matmul_many", "matmul", "attention", "prepare_rms_norm", "prepare_swiglu", "decode_layer"):
                be.__dict__.pop(attr, None)
        return times, {k: v / args.steps for k, v in probe.acc.items()}

    res = {}
    for n_seq in (1, args.slots):
        times, parts = decode_run(n_seq)
        med = statistics.median(times)
        res[n_seq] = med
        print(f"\n{n_seq} sequence(s): step {1e3 * med:.2f} ms median ({n_seq / med:.1f} tokens/s); mean split:")
        total = statistics.fmean(times)
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {k:32s} {1e3 * v:7.3f} ms  {100 * v / total:5.1f} %")
        rest = total - sum(parts.values())
        print(f"  {'rest (numpy glue, Python)':32s} {1e3 * rest:7.3f} ms  {100 * rest / total:5.1f} %")
    print(f"\n{args.slots} sequences: {args.slots * res[1] / res[args.slots]:.2f}x the tokens/s of one")
    model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
