#!/usr/bin/env python3
"""Where llm-server's CPU goes under load (issue #15's throughput work): per thread, per step, per function.

Serves the synthetic TinyLlama-shaped model (or -m FILE) in this process (uvicorn in a thread, the engine's
scheduler thread, the kernels' worker threads) while `--clients` streaming clients run bench_server.py's workload
in a separate process (so they do not count). Reports:

* process CPU time split by thread: the scheduler (Python + the C calls it makes), the kernels' pool workers (C
  only), the event loop (HTTP, JSON, SSE), the rest; and the client process's own CPU time;
* the scheduler thread's CPU split into the runner's forward pass (C kernels + the model's Python glue) and
  everything else of a step (planning, sampling, detokenizing, pushing events), per step;
* the wall clock of a decode step (no prompt token in it), median and mean over the run: the forward pass split
  into the C layer calls, the output layer and the Python between them, then the rest of the step (sampling,
  text, events), then the gap to the next step (handing the events over, waiting for the lock or the GIL);
* with --cprofile N: the N most expensive functions of the scheduler thread (cProfile, cumulative).

    python scripts/profile_server.py                      # q4_0, 8 clients x 1 request of 128 tokens
    python scripts/profile_server.py --clients 1 --cprofile 25
    python scripts/profile_server.py -m model.gguf --clients 4 --tokens 64
    python scripts/profile_server.py --fake-forward-ms 8      # the serving stack alone: a sleep for the model

CPU times, not wall times, so a loaded machine still gives a usable split (the rates are only indicative).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every thread of this process, by native thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)
    return out


def clients_main(port: int, prompts: list[list[int]], conc: int, tokens: int, q: Any) -> None:
    """The client process: bench_server.py's streaming clients; sends back (results, its CPU seconds)."""
    from bench_server import run_load

    t0 = time.process_time()  # the requests' CPU, not the start-up's imports
    res = run_load(port, prompts, conc, 1, tokens)
    q.put((res, time.process_time() - t0))


def fake_forward(model: Any, seconds: float) -> Any:
    """A runner's forward that sleeps `seconds` and returns logits whose argmax walks through a sentence's tokens."""
    import numpy as np

    words = model.tokenize(" the cat sat on a mat and ran to the city of dreams, where people walk")[1:]
    k = [0]

    def forward(batch: Any) -> list[Any]:
        time.sleep(seconds)
        out: list[Any] = []
        for e in batch:
            row = None
            if e.logits:
                row = np.zeros(model.n_vocab, np.float32)
                row[words[k[0] % len(words)]] = 1.0
                k[0] += 1
            out.append(row)
        return out
    return forward


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: the synthetic TinyLlama-shaped --type)")
    ap.add_argument("--type", default="q4_0", help="synthetic model's weight type (default q4_0)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent streaming clients = slots (default 8)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128, help="generated tokens per request (default 128)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="print the scheduler's N top functions")
    ap.add_argument("--fake-forward-ms", type=float, default=None, metavar="MS",
                    help="replace the forward pass by a sleep of MS (the GIL released, as in the kernels) returning "
                         "logits that pick ordinary words: the serving stack's own CPU and latency per step")
    ap.add_argument("--dir", default="/tmp/tilellm-bench")
    args = ap.parse_args(argv)

    import uvicorn
    from bench_server import make_prompts, model_path, summarize

    import tilellm
    from tilellm.llm.server import Engine
    from tilellm.llm.server.app import ServerSettings, create_app

    path = Path(args.model) if args.model else model_path(args.type, Path(args.dir))
    prompts = [p[0] for p in make_prompts(path, args.clients, args.prompt_tokens)]
    model = tilellm.load(str(path), n_ctx=args.prompt_tokens + args.tokens + 16, n_threads=args.threads,
                         backend=args.backend)
    engine = Engine(model, n_slots=args.clients).start()
    runner = engine.runner
    backend_name = model.decoder.backend.name

    # the scheduler thread's CPU inside forward(), and optionally its cProfile
    fwd = {"cpu": 0.0, "n": 0, "tokens": 0}
    forward = runner.forward if args.fake_forward_ms is None else fake_forward(model, args.fake_forward_ms / 1e3)
    cur: dict[str, float] = {}   # this step's wall-clock parts (seconds)
    walls: list[dict[str, float]] = []

    def timed_forward(batch: Any) -> Any:
        t0, w0 = time.thread_time(), time.perf_counter()
        cur.update(layers=0.0, head=0.0, decode=float(all(len(e.tokens) == 1 for e in batch)))
        try:
            return forward(batch)
        finally:
            fwd["cpu"] += time.thread_time() - t0
            fwd["n"] += 1
            fwd["tokens"] += sum(len(e.tokens) for e in batch)
            cur["fwd"] = time.perf_counter() - w0
    runner.forward = timed_forward  # type: ignore[method-assign]

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            w0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                cur[key] = cur.get(key, 0.0) + time.perf_counter() - w0
        return wrapper
    be = model.decoder.backend
    be.decode_layer = timed(be.decode_layer, "layers")  # type: ignore[method-assign]
    model.decoder._head = timed(model.decoder._head, "head")  # type: ignore[method-assign]
    prof = cProfile.Profile() if args.cprofile else None
    step = engine._step
    sched_cpu = {"cpu": 0.0}

    last_end = [0.0]

    def profiled_step(cancelled: Any) -> None:
        t0, w0 = time.thread_time(), time.perf_counter()
        cur.clear()
        if prof is not None:
            prof.enable()
        try:
            step(cancelled)
        finally:
            if prof is not None:
                prof.disable()
            sched_cpu["cpu"] += time.thread_time() - t0
            w1 = time.perf_counter()
            if cur.get("decode") and last_end[0]:
                walls.append({"gap": w0 - last_end[0], "step": w1 - w0, "fwd": cur["fwd"], "layers": cur["layers"],
                              "head": cur["head"]})
            last_end[0] = w1
    engine._step = profiled_step  # type: ignore[method-assign]

    app = create_app(engine, ServerSettings(model_id="profile"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    loop_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    loop_thread.start()
    while not server.started:
        time.sleep(0.01)
    ctx = multiprocessing.get_context("spawn")
    try:
        # warm-up: every slot once, a few tokens
        q = ctx.Queue()
        p = ctx.Process(target=clients_main, args=(port, prompts, args.clients, 4, q))
        p.start()
        q.get()
        p.join()
        fwd.update(cpu=0.0, n=0, tokens=0)
        sched_cpu["cpu"] = 0.0
        walls.clear()
        last_end[0] = 0.0
        if prof is not None:
            prof = cProfile.Profile()
        c0, w0, st0 = thread_cpu(), time.perf_counter(), engine.stats()
        p0 = time.process_time()
        p = ctx.Process(target=clients_main, args=(port, prompts, args.clients, args.tokens, q))
        p.start()
        res, client_cpu = q.get()
        p.join()
        c1, wall, st1 = thread_cpu(), time.perf_counter() - w0, engine.stats()
        proc_cpu = time.process_time() - p0
    finally:
        server.should_exit = True
        loop_thread.join(10)
        engine.close()
        model.close()

    steps = st1.steps - st0.steps
    gen = st1.generated_tokens - st0.generated_tokens
    sched_id = engine._thread.native_id if engine._thread is not None else -1
    loop_id = loop_thread.native_id
    main_id = threading.main_thread().native_id
    by: dict[str, float] = {"scheduler": 0.0, "event loop (HTTP, SSE)": 0.0, "kernel workers": 0.0, "main": 0.0}
    for tid, t in c1.items():
        d = t - c0.get(tid, 0.0)
        if tid == sched_id:
            by["scheduler"] += d
        elif tid == loop_id:
            by["event loop (HTTP, SSE)"] += d
        elif tid == main_id:
            by["main"] += d
        else:
            by["kernel workers"] += d
    s = summarize(res, args.clients)
    wall = s["wall_s"]  # the requests' own span (the measured span above also holds the client process's start)
    print(f"{path.name}: {args.clients} clients x {args.tokens} tokens, {args.threads} threads, "
          f"backend {backend_name}")
    print(f"wall {wall:.2f} s, {gen} tokens generated in {steps} steps ({gen / max(steps, 1):.2f} tokens/step), "
          f"aggregate {s['agg_tps']:.1f} t/s, TPOT p50 {s['tpot_p50_ms']:.2f} ms")
    print(f"process CPU {proc_cpu:.2f} s ({proc_cpu / wall:.2f} cores); client process {client_cpu:.2f} s")
    print("\n| thread | CPU s | share | per step ms |\n|---|---|---|---|")
    for k, v in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.2f} | {100 * v / max(proc_cpu, 1e-9):.1f} % | {1e3 * v / max(steps, 1):.3f} |")
    rest = sched_cpu["cpu"] - fwd["cpu"]
    print("\nscheduler thread, per step (CPU):")
    print(f"  forward (C kernels called from it + model glue) {1e3 * fwd['cpu'] / max(fwd['n'], 1):8.3f} ms "
          f"over {fwd['n']} forwards, {fwd['tokens'] / max(fwd['n'], 1):.2f} tokens each")
    print(f"  rest of the step (plan, sample, text, events)    {1e3 * rest / max(steps, 1):8.3f} ms")
    py_total = rest + by["event loop (HTTP, SSE)"]
    print(f"  Python outside the forward pass, all threads:    {1e3 * py_total / max(steps, 1):8.3f} ms/step = "
          f"{100 * py_total / max(proc_cpu, 1e-9):.1f} % of the process CPU")
    if walls:
        print(f"\nwall clock of a decode step, ms ({len(walls)} steps; median / mean / p90):")
        parts = [("forward: C layer calls (tl_layer_run)", lambda w: w["layers"]),
                 ("forward: output layer (norm + GEMM)", lambda w: w["head"]),
                 ("forward: Python around them" if args.fake_forward_ms is None else "forward: the sleep for it",
                  lambda w: w["fwd"] - w["layers"] - w["head"]),
                 ("rest of the step (sample, text, events)", lambda w: w["step"] - w["fwd"]),
                 ("between steps (hand-over, lock, GIL)", lambda w: w["gap"]),
                 ("period (step + gap)", lambda w: w["step"] + w["gap"])]
        for label, f in parts:
            xs = sorted(1e3 * f(w) for w in walls)
            med, mean, p90 = xs[len(xs) // 2], sum(xs) / len(xs), xs[int(0.9 * (len(xs) - 1))]
            print(f"  {label:42s} {med:7.3f} / {mean:7.3f} / {p90:7.3f}")
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.cprofile)
        print("\nscheduler thread, cProfile (cumulative):")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
