#!/usr/bin/env python3
"""Prompt-processing throughput of the deepseek2 path on a synthetic DeepSeek-shaped GGUF.

Writes (once, cached by shape) a deepseek2 file with random weights: MLA in the k_b/v_b layout without q LoRA
(V2-Lite style), 1 dense block then MoE blocks of 64 experts, top-6, 2 shared experts, softmax routing; every
matrix in q8_0 or q4_0 (norms, router F32). Then runs a pp512 prefill and reports tokens/s and where the time
goes, by wrapping the backend (every matmul timed and attributed to its weight) and the MoE helpers:

* expert matmuls   — backend.matmul on `ffn_*_exps` matrices (the work MoE is made of);
* routing/dispatch — the rest of the MoE FFN: router softmax/top-k, grouping tokens by expert, gathers,
                     SwiGLU elementwise, weighted scatter-add (our Python/numpy overhead);
* other matmuls    — MLA projections (q, kv_a, per-head k_b/v_b), output, router, shared experts, dense FFN, head;
* rest             — attention softmax/score maths in numpy, norms, rope, embeddings.

    python scripts/bench_deepseek_synth.py                 # best backend, q8_0
    python scripts/bench_deepseek_synth.py --type q4_0 --backend portable --threads 2
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tilellm.backend import Backend

SHAPE = dict(hidden=768, heads=8, kv_lora=256, nope=64, rope=32, v_head=64, ff=2048, experts=64, used=6,
             shared=2, ff_exp=384, layers=3, dense=1, vocab=2048, ctx=1024)


def write_synthetic(path: Path, wtype: str, seed: int = 0, **s: int) -> None:
    """A deepseek2 GGUF of shape `s` (see SHAPE) with N(0, 1/sqrt(fan_in)) weights in `wtype`."""
    import gguf

    from tilellm.quant import GGMLType, quantize

    t = GGMLType[wtype.upper()]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "deepseek2")
    a = "deepseek2."
    d, H = s["hidden"], s["heads"]
    for k, v in [("block_count", s["layers"]), ("context_length", s["ctx"]), ("embedding_length", d),
                 ("feed_forward_length", s["ff"]), ("attention.head_count", H), ("attention.head_count_kv", 1),
                 ("attention.key_length", s["kv_lora"] + s["rope"]), ("attention.value_length", s["kv_lora"]),
                 ("attention.key_length_mla", s["nope"] + s["rope"]), ("attention.value_length_mla", s["v_head"]),
                 ("attention.kv_lora_rank", s["kv_lora"]), ("rope.dimension_count", s["rope"]),
                 ("leading_dense_block_count", s["dense"]), ("expert_count", s["experts"]),
                 ("expert_used_count", s["used"]), ("expert_shared_count", s["shared"]),
                 ("expert_feed_forward_length", s["ff_exp"]), ("expert_gating_func", 1), ("vocab_size", s["vocab"])]:
        w.add_uint32(a + k, v)
    w.add_float32(a + "rope.freq_base", 10000.0)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(a + "expert_weights_scale", 1.0)

    def mat(name: str, k: int, *rows: int, quant: bool = True) -> None:
        x = (rng.standard_normal((*rows, k), dtype=np.float32) / np.float32(np.sqrt(k)))
        if quant:
            w.add_tensor(name, quantize(x, t), raw_dtype=gguf.GGMLQuantizationType(int(t)))
        else:
            w.add_tensor(name, x)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1 + 0.05 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", d, s["vocab"])
    norm("output_norm.weight", d)
    mat("output.weight", d, s["vocab"])
    for i in range(s["layers"]):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", d)
        mat(p + "attn_q.weight", d, H * (s["nope"] + s["rope"]))
        mat(p + "attn_kv_a_mqa.weight", d, s["kv_lora"] + s["rope"])
        norm(p + "attn_kv_a_norm.weight", s["kv_lora"])
        mat(p + "attn_k_b.weight", s["nope"], H, s["kv_lora"])
        mat(p + "attn_v_b.weight", s["kv_lora"], H, s["v_head"])
        mat(p + "attn_output.weight", H * s["v_head"], d)
        norm(p + "ffn_norm.weight", d)
        if i < s["dense"]:
            mat(p + "ffn_gate.weight", d, s["ff"])
            mat(p + "ffn_up.weight", d, s["ff"])
            mat(p + "ffn_down.weight", s["ff"], d)
        else:
            E, f, fs = s["experts"], s["ff_exp"], s["ff_exp"] * s["shared"]
            mat(p + "ffn_gate_inp.weight", d, E, quant=False)
            mat(p + "ffn_gate_exps.weight", d, E, f)
            mat(p + "ffn_up_exps.weight", d, E, f)
            mat(p + "ffn_down_exps.weight", f, E, d)
            mat(p + "ffn_gate_shexp.weight", d, fs)
            mat(p + "ffn_up_shexp.weight", d, fs)
            mat(p + "ffn_down_shexp.weight", fs, d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class TimedBackend(Backend):
    """Forwards to a backend and adds each matmul's wall time to a bucket named after its weight."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.weight_types, self.n_threads = inner.name, inner.weight_types, inner.n_threads
        self.times: dict[str, float] = defaultdict(float)
        self.in_moe = False  # set while the routed-expert code runs, to attribute activation preparation


    def supports(self, t: Any) -> bool:
        return self.inner.supports(t)

    def prepare(self, x: np.ndarray, t: Any) -> Any:
        t0 = time.perf_counter()
        r = self.inner.prepare(x, t)
        self.times["expert_prepare" if self.in_moe else "prepare"] += time.perf_counter() - t0
        return r

    def matmul(self, weight: Any, x: Any, out: np.ndarray | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        r = self.inner.matmul(weight, x, out)
        name = weight.name
        kind = "expert" if "_exps" in name else ("router" if "gate_inp" in name else "other")
        self.times[kind] += time.perf_counter() - t0
        return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--type", default="q8_0", choices=["q8_0", "q4_0"])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()

    import tilellm.llm.models.deepseek2 as ds
    from tilellm import backend as backends
    from tilellm.llm.gguf.reader import open_gguf

    path = Path(args.dir) / f"tilellm-ds2-synth-{args.type}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        write_synthetic(path, args.type, **SHAPE)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    be = TimedBackend(backends.get(args.backend, n_threads=args.threads))
    moe_time = [0.0]
    inner_moe, inner_route = ds.moe_ffn, ds.route

    def timed(fn: Any) -> Any:
        def wrap(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            be.in_moe = True
            try:
                return fn(*a, **k)
            finally:
                be.in_moe = False
                moe_time[0] += time.perf_counter() - t0
        return wrap

    ds.moe_ffn, ds.route = timed(inner_moe), timed(inner_route)  # everything the routed MoE does except the router
    m = ds.DeepSeek2Model(open_gguf(path), be, n_ctx=args.n_prompt, n_batch=args.n_prompt)
    ids = np.random.default_rng(1).integers(0, m.n_vocab, args.n_prompt)
    m.eval(ids[:16])  # warm-up (page in weights, kernel init)
    best = None
    for _ in range(args.reps):
        be.times.clear()
        moe_time[0] = 0.0
        m.reset()
        t0 = time.perf_counter()
        m.eval(ids)
        wall = time.perf_counter() - t0
        if best is None or wall < best[0]:
            best = (wall, dict(be.times), moe_time[0])
    wall, times, moe = best
    expert = times.get("expert", 0.0)
    eprep = times.get("expert_prepare", 0.0)
    dispatch = moe - expert - eprep
    other = times.get("other", 0.0) + times.get("router", 0.0) + times.get("prepare", 0.0)
    rest = wall - moe - other
    hp = m.hparams
    print(f"backend {be.name} ({be.n_threads} threads), {args.type}, {hp.n_layer} layers ({hp.n_dense_lead} dense), "
          f"{hp.n_expert} experts top-{hp.router.n_used} + {hp.n_expert_shared} shared, hidden {hp.n_embd}, "
          f"expert ff {hp.n_ff_exp}")
    print(f"pp{args.n_prompt}: {args.n_prompt / wall:.1f} t/s ({wall:.2f} s)")
    for label, v in [("expert matmuls", expert), ("expert activation quantization (prepare)", eprep),
                     ("routing + dispatch overhead", dispatch),
                     ("other matmuls (MLA, shared, dense, router, head)", other),
                     ("rest (attention maths, norms, rope)", rest)]:
        print(f"  {label:<50s} {v:7.3f} s  {100 * v / wall:5.1f} %")

if __name__ == "__main__":
    main()
