"""A layer program: one decoder layer of any architecture as a short list of steps, for backends that run a whole
layer per call (`Backend.plan_layer` / `Backend.decode_layer`).

A model describes each layer once with `LayerProgram`'s methods (norm, products, rope, cache store, attention,
residual add, mixture of experts, ...). The steps work on a scratch row of floats per token whose first `n_embd`
floats are the token's residual stream (offset `LayerProgram.H`); `buffer(n)` reserves more of the row. The
program names the weights (TensorViews), norm vectors and KV caches it uses; nothing in it is LLaMA-specific, so
llama, qwen2, gemma3 and deepseek2 (dense and MoE layers) all describe their layers with it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tilellm.quant import TensorView

PRE = ("none", "rms", "swiglu", "geglu")  # what a product step does to its input first
OPS = ("rms_norm", "matmul", "matmul_heads", "add", "copy", "rope", "store", "attention", "moe")


@dataclass(frozen=True)
class MoESpec:
    """A DeepSeek mixture-of-experts FFN: router logits -> softmax (gating 1) or sigmoid (2) scores; experts chosen on
    scores + `bias` within the `n_group_used` best of `n_group` groups; weights = chosen scores (/ their sum if
    `norm`) * `scale`; expert e = down_e(silu(gate_e x) * up_e x) from the 3-D `*_exps` tensors."""

    router: TensorView
    bias: np.ndarray | None
    n_used: int
    gating: int
    n_group: int
    n_group_used: int
    norm: bool
    scale: float
    gate_exps: TensorView
    up_exps: TensorView
    down_exps: TensorView


@dataclass(frozen=True)
class Step:
    """One step of a layer program (the fields of C's tl_step that its op uses; offsets are floats into the token's
    scratch row, `rows` rows `ld_*` floats apart for the steps over heads)."""

    op: str
    dst: int = 0
    src: int = 0
    src2: int = 0
    rows: int = 1
    ld_dst: int = 0
    ld_src: int = 0
    n: int = 0
    pre: str = "none"
    neox: bool = False
    weights: tuple[TensorView, ...] = ()
    vec: np.ndarray | None = field(default=None, repr=False)
    eps: float = 0.0
    scale: float = 0.0
    cache: int = 0
    cache2: int = 0
    c_off: int = 0
    c_ld: int = 0
    n_head: int = 0
    n_head_kv: int = 0
    dk: int = 0
    dv: int = 0
    window: int = 0
    moe: MoESpec | None = None


class LayerProgram:
    """The steps of one decoder layer for one token (or a few tokens of different sequences), built by the model.

    `caches` are KV cache arrays of any cache type (tilellm.quant.kv) `[n_slots, n_ctx, ...]` (one sequence: a leading
    axis of 1), each slot's positions
    contiguous; a token's keys and values are written at its position in its slot."""

    H = 0  # offset of the residual stream in the row

    def __init__(self, n_embd: int, n_rot: int) -> None:
        self.n_embd, self.n_rot = int(n_embd), int(n_rot)
        self.row = self.n_embd
        self.steps: list[Step] = []
        self.caches: list[np.ndarray] = []

    def buffer(self, n: int) -> int:
        """Reserve n more floats of the token's row; their offset."""
        off = self.row
        self.row += int(n)
        return off

    def cache(self, a: np.ndarray) -> int:
        """Register a cache array [n_slots, n_ctx, ...]; its index for `store` / `attention`."""
        self.caches.append(a)
        return len(self.caches) - 1

    def _add(self, op: str, **kw: object) -> None:
        self.steps.append(Step(op, **kw))  # type: ignore[arg-type]

    def rms_norm(self, dst: int, src: int, w: np.ndarray, eps: float, n: int, rows: int = 1, ld: int = 0) -> None:
        """dst row r = src row r / sqrt(mean(src row r ^ 2) + eps) * w (rows of n, ld apart; in place allowed)."""
        self._add("rms_norm", dst=dst, src=src, vec=w, eps=float(eps), n=n, rows=rows, ld_dst=ld, ld_src=ld)

    def matmul(self, weights: Sequence[TensorView], src: int, dst: int, k: int, *, pre: str = "none",
               norm: np.ndarray | None = None, eps: float = 0.0, src2: int = 0) -> None:
        """dst = [W x for W in weights] one after another, x = src's k floats after `pre`: "rms" (rms_norm with
        `norm`, `eps`), "swiglu" / "geglu" (silu(src) * src2 / gelu_tanh(src) * src2), or "none"."""
        self._add("matmul", dst=dst, src=src, src2=src2, n=k, pre=pre, weights=tuple(weights), vec=norm,
                  eps=float(eps))

    def matmul_heads(self, weight: TensorView, rows: int, src: int, ld_src: int, k: int, dst: int, ld_dst: int) -> None:
        """For r < rows: dst row r = weight.matrix(r) times the k floats of src row r (a 3-D weight, one matrix
        per head)."""
        self._add("matmul_heads", weights=(weight,), rows=rows, src=src, ld_src=ld_src, n=k, dst=dst, ld_dst=ld_dst)

    def add(self, dst: int, n: int, *, src: int | None = None, vec: np.ndarray | None = None, rows: int = 1,
            ld_dst: int = 0, ld_src: int = 0) -> None:
        """dst rows += src rows, or += vec (a bias)."""
        self._add("add", dst=dst, n=n, src=src or 0, vec=vec, rows=rows, ld_dst=ld_dst, ld_src=ld_src)

    def copy(self, dst: int, src: int, n: int, rows: int = 1, ld_dst: int = 0, ld_src: int = 0) -> None:
        """dst rows = src rows."""
        self._add("copy", dst=dst, src=src, n=n, rows=rows, ld_dst=ld_dst, ld_src=ld_src)

    def rope(self, src: int, rows: int, ld: int, neox: bool) -> None:
        """Rotate the first n_rot floats of each of `rows` rows (ld apart) in place by the token's angles: adjacent
        pairs, or the two halves (`neox`)."""
        self._add("rope", src=src, rows=rows, ld_src=ld, n=self.n_rot, neox=bool(neox))

    def store(self, cache: int, src: int, n: int, rows: int = 1, ld_src: int = 0, c_off: int = 0,
              c_ld: int = 0) -> None:
        """src rows (n floats each) into the cache at the token's position: row r at c_off + r * c_ld."""
        self._add("store", cache=cache, src=src, n=n, rows=rows, ld_src=ld_src, c_off=c_off, c_ld=c_ld)

    def attention(self, q: int, out: int, k_cache: int, v_cache: int, n_head: int, n_head_kv: int, dk: int, dv: int,
                  scale: float, window: int = 0, ld_q: int | None = None, ld_out: int | None = None) -> None:
        """Causal GQA attention of the token's q heads (dk floats, ld_q apart) over positions 0..pos of its slot
        (`window` > 0: the last `window` of them), keys [n_head_kv, dk] and values [n_head_kv, dv] per position;
        out heads ld_out apart."""
        self._add("attention", src=q, dst=out, cache=k_cache, cache2=v_cache, n_head=n_head, n_head_kv=n_head_kv,
                  dk=dk, dv=dv, scale=float(scale), window=int(window), ld_src=dk if ld_q is None else ld_q,
                  ld_dst=dv if ld_out is None else ld_out, rows=n_head)

    def moe(self, src: int, dst: int, n: int, spec: MoESpec) -> None:
        """dst (n floats) = the token's chosen experts' weighted sum over src (see MoESpec)."""
        self._add("moe", src=src, dst=dst, n=n, moe=spec)

    def weights(self) -> list[TensorView]:
        """Every weight tensor the steps multiply with."""
        out: list[TensorView] = []
        for s in self.steps:
            out.extend(s.weights)
            if s.moe is not None:
                out += [s.moe.router, s.moe.gate_exps, s.moe.up_exps, s.moe.down_exps]
        return out
