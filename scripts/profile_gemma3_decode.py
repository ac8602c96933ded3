#!/usr/bin/env python3
"""Where Gemma 3 270M's decode time goes (issue 19): per-token CPU time by part, one-call layers vs steps.

    python scripts/profile_gemma3_decode.py --backend avx512 --tokens 24 --rounds 3
    TILELLM_CPU_CAP=avx2 python scripts/profile_gemma3_decode.py --backend avx2

One thread, process CPU time (the machine is shared: wall time says more about the neighbours than about us).
Each round decodes --tokens tokens after an 8-token prompt twice, once through the one-call layers (layer
programs) and once through the step-by-step path. Every C entry point is timed where Python calls it (the kernel
library's cffi `lib` behind a timing proxy), which splits a token into: the tied output head (its tl_gemm), the
layers' products (tl_gemm, tl_gemm_many), the activation preparations, attention, the one-call layers
(tl_layer_run: everything of a layer), and the rest (Python and numpy). Prints per-token ms by part (best round)
and the fractions.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

PARTS = {  # C entry point (cProfile's name for the cffi built-in) -> part
    "tl_gemm_many": "layer products", "tl_gemm": "layer products", "tl_act_prepare": "prepare",
    "tl_act_prepare_rms": "prepare", "tl_act_prepare_swiglu": "prepare", "tl_attention": "attention",
    "tl_layer_run": "one-call layers",
}


class Timed:
    """The cffi `lib` of a KernelLib with every call timed (process CPU time), summed by part."""

    def __init__(self, lib: Any, n_vocab: int) -> None:
        self._lib, self._n_vocab, self.parts = lib, n_vocab, {}

    def __getattr__(self, name: str) -> Any:
        f = getattr(self._lib, name)
        part = PARTS.get(name)
        if part is None or not callable(f):
            return f

        def timed(*a: Any) -> Any:
            t0 = time.process_time()
            try:
                return f(*a)
            finally:
                key = "head (tied output)" if name == "tl_gemm" and a[4] == self._n_vocab else part
                self.parts[key] = self.parts.get(key, 0.0) + time.process_time() - t0
        return timed


def profile(m, prompt: list[int], ids: list[int], fused: bool) -> tuple[float, dict[str, float]]:
    """CPU seconds per decoded token, and per part."""
    if not fused:
        m.__dict__["_plans_store"] = {(m.backend, m._program_key()): None}
    else:
        m.__dict__.pop("_plans_store", None)
        m._layer_plans()  # planned before timing
    m.reset()
    m.eval(prompt)
    kl = m.backend.lib
    timed = kl.lib = Timed(kl.lib, m.n_vocab)
    t0 = time.process_time()
    try:
        for t in ids:
            m.eval([t])
    finally:
        kl.lib = timed._lib
    total = time.process_time() - t0
    parts = dict(timed.parts)
    parts["rest (Python, numpy)"] = total - sum(parts.values())
    n = len(ids)
    m.__dict__.pop("_plans_store", None)
    return total / n, {k: v / n for k, v in parts.items()}


def head_time(m, reps: int = 5) -> float:
    """CPU seconds of the output head (final norm + tied output gemv) for one token."""
    h = np.random.default_rng(0).standard_normal((1, m.hparams.n_embd)).astype(np.float32)
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        m._head(h)
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from tilellm import backend as backends
    from tilellm.llm.cli.default_model import default_model_path
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.gemma3 import Gemma3Model

    be = backends.get(args.backend, n_threads=1)
    m = Gemma3Model(open_gguf(default_model_path(progress=None)), be, n_ctx=128)
    rng = np.random.default_rng(1)
    prompt = [2] + rng.integers(3, 200000, 7).tolist()
    ids = rng.integers(3, 200000, args.tokens).tolist()
    best: dict[str, tuple[float, dict[str, float]]] = {}
    for _ in range(args.rounds):  # interleaved: both paths see the same load
        for name, fused in (("one-call layers", True), ("steps", False)):
            r = profile(m, prompt, ids, fused)
            if name not in best or r[0] < best[name][0]:
                best[name] = r
    head = head_time(m)
    print(f"backend {be.name}, 1 thread, CPU ms per decoded token (best of {args.rounds} rounds of {args.tokens}); "
          f"the head alone (final norm + 262144 x 640 tied output): {head * 1e3:.2f} ms")
    for name, (tot, parts) in best.items():
        print(f"\n{name}: {tot * 1e3:.2f} ms")
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {k:28s} {v * 1e3:7.2f} ms  {v / tot:6.1%}")


if __name__ == "__main__":
    main()
