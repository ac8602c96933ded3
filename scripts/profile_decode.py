#!/usr/bin/env python3
"""Where one decoded token's time goes: the C calls of a LLaMA decode step, one by one, on a model's own weights.

Replays what `tl_layer_run` does for one token at depth 0 (RMS norm + q/k/v, rope-free attention over one cached
position, o, RMS norm + gate/up, SwiGLU + down, per layer; then the output norm + head) as raw cffi calls, each
timed on the wall clock (perf_counter_ns around the call: ~1 us of cffi overhead each), over all the layers in
order so the weights stream from wherever a real token finds them (L3 / DRAM), for 1 and 2 threads alternately.
Also times the real `model.eval([tok])` the same way. Prints best and median per op, in microseconds, and the
read bandwidth of each product.

    python scripts/profile_decode.py /tmp/tilellm-bench/tinyllama-4l-q4_0.gguf --reps 30
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--backend", default="avx512")
    ap.add_argument("--reps", type=int, default=30, help="tokens per thread count (default 30)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--cpu", action="store_true", help="the calling thread's CPU time instead of wall time (use with "
                    "--threads 1 on a loaded machine: the time the op ran, not the time it waited)")
    a = ap.parse_args(argv)

    from tilellm.llm.api import load

    model = load(a.model, n_ctx=256, n_threads=2, backend=a.backend)
    dec = model.decoder
    be = dec.backend
    lib = be.lib
    ffi, C, ctx = lib.ffi, lib.lib, lib.ctx
    hp = dec.hparams
    nl, d = hp.n_layer, hp.n_embd
    t_ = dec.file.tensors

    def W(name: str):
        tv = t_[name]
        return int(tv.type), ffi.from_buffer(tv.data), tv.row_bytes, tv.n_rows, tv.k, tv.data.nbytes

    def vec(name: str) -> np.ndarray:
        return np.ascontiguousarray(t_[name].dequantize().reshape(-1), dtype=np.float32)

    layers = []
    for li in range(nl):
        p = f"blk.{li}."
        layers.append(dict(q=W(p + "attn_q.weight"), k=W(p + "attn_k.weight"), v=W(p + "attn_v.weight"),
                           o=W(p + "attn_output.weight"), g=W(p + "ffn_gate.weight"), u=W(p + "ffn_up.weight"),
                           dn=W(p + "ffn_down.weight"), an=vec(p + "attn_norm.weight"), fn=vec(p + "ffn_norm.weight")))
    head = W("output.weight")
    onorm = vec("output_norm.weight")
    eps = float(hp.rms_eps)
    f = layers[0]["g"][3]
    H, Hkv = hp.n_head, hp.n_head_kv
    D = d // H
    maxk = max(d, f)
    wt = layers[0]["q"][0]
    act = np.empty(int(C.tl_act_bytes(ctx, wt, 1, maxk)) + 64, np.uint8)
    off = -int(ffi.cast("uintptr_t", ffi.from_buffer(act))) % 64
    actp = ffi.from_buffer(act[off:])
    rng = np.random.default_rng(0)
    h = rng.standard_normal(d).astype(np.float32)
    xn = np.empty(maxk, np.float32)
    qkv = np.empty(d + 2 * Hkv * D, np.float32)
    att = np.empty(d, np.float32)
    gu = np.empty(2 * f, np.float32)
    y = np.empty(d, np.float32)
    logits = np.empty(head[3], np.float32)
    kc = rng.standard_normal((2, Hkv * D)).astype(np.float32)
    vc = rng.standard_normal((2, Hkv * D)).astype(np.float32)
    P = ffi.from_buffer
    hp_, xnp, qkvp, attp, gup, yp, lgp = (P("float[]", z) for z in (h, xn, qkv, att, gu, y, logits))
    kcp, vcp = P(kc), P(vc)

    def many(ws, k, outs, nth):
        n = len(ws)
        return C.tl_gemm_many(ctx, n, [w[0] for w in ws], [w[1] for w in ws], [w[2] for w in ws],
                              [w[3] for w in ws], k, actp, 1, outs, [w[3] for w in ws], nth)

    times: dict[tuple[int, str], list[int]] = defaultdict(list)
    bytes_of: dict[str, int] = {}
    clk = time.perf_counter_ns if not a.cpu else time.thread_time_ns

    def token(nth: int) -> None:
        acc: dict[str, int] = defaultdict(int)
        for L in layers:
            t0 = clk()
            C.tl_act_prepare_rms(ctx, wt, hp_, d, P("float[]", L["an"]), eps, 1, d, xnp, actp, nth)
            t1 = clk()
            many([L["q"], L["k"], L["v"]], d, [qkvp, qkvp + d, qkvp + d + Hkv * D], nth)
            t2 = clk()
            C.tl_attention_kv(qkvp, d, kcp, 0, Hkv * D * 4, vcp, 0, Hkv * D * 4, attp, d, 1, 2, H, Hkv, D, 1, 0,
                              0.125, nth)
            t3 = clk()
            C.tl_act_prepare(ctx, wt, attp, d, 1, d, actp, nth)
            t4 = clk()
            many([L["o"]], d, [yp], nth)
            t5 = clk()
            C.tl_act_prepare_rms(ctx, wt, hp_, d, P("float[]", L["fn"]), eps, 1, d, xnp, actp, nth)
            t6 = clk()
            many([L["g"], L["u"]], d, [gup, gup + f], nth)
            t7 = clk()
            C.tl_act_prepare_swiglu(ctx, wt, gup, gup + f, 1, f, xnp, actp, nth)
            t8 = clk()
            many([L["dn"]], f, [yp], nth)
            t9 = clk()
            for name, dt in (("rms+prep", t1 - t0 + t6 - t5), ("qkv", t2 - t1), ("attention", t3 - t2),
                             ("prep(attn)", t4 - t3), ("o", t5 - t4), ("gate+up", t7 - t6), ("swiglu+prep", t8 - t7),
                             ("down", t9 - t8)):
                acc[name] += dt
        t0 = clk()
        C.tl_act_prepare_rms(ctx, wt, hp_, d, P("float[]", onorm), eps, 1, d, xnp, actp, nth)
        t1 = clk()
        many([head], d, [lgp], nth)
        t2 = clk()
        acc["head rms+prep"] += t1 - t0
        acc["head"] += t2 - t1
        for k_, v_ in acc.items():
            times[(nth, k_)].append(v_)
        times[(nth, "TOTAL (replay)")].append(sum(acc.values()))

    L0 = layers[0]
    bytes_of.update({"qkv": nl * sum(L0[x][5] for x in "qkv"), "o": nl * L0["o"][5],
                     "gate+up": nl * (L0["g"][5] + L0["u"][5]), "down": nl * L0["dn"][5], "head": head[5]})
    ths = [int(x) for x in a.threads.split(",")]
    toks = list(range(1, 9))
    for nth in ths:  # warm-up
        token(nth)
    for r in range(a.reps):
        for nth in ths:
            time.sleep(0.01)
            token(nth)
            lib.n_threads = nth  # the model's own eval at this thread count
            model.reset()
            model.eval(toks[:1])
            time.sleep(0.01)
            t0 = clk()
            model.eval([toks[1 + r % 7]])
            times[(nth, "model.eval (real)")].append(clk() - t0)
    names = ["rms+prep", "qkv", "attention", "prep(attn)", "o", "gate+up", "swiglu+prep", "down", "head rms+prep",
             "head", "TOTAL (replay)", "model.eval (real)"]
    hdr = "| op (all layers) |" + "".join(f" {n} thr best | median | GB/s (best) |" for n in ths)
    print(hdr)
    print("|---|" + "---:|---:|---:|" * len(ths))
    for name in names:
        row = f"| {name} |"
        for nth in ths:
            v = times[(nth, name)]
            b = min(v) / 1e3
            m = statistics.median(v) / 1e3
            gbs = f"{bytes_of[name] / (b * 1e3):.1f}" if name in bytes_of else ""
            row += f" {b:.0f} | {m:.0f} | {gbs} |"
        print(row)
    mb = sum(bytes_of.values()) / 1e6
    print(f"(us per token; {a.reps} tokens per thread count, alternated; weights {mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
