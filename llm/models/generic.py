"""LLaMA-shaped decoders run op by op through the backend: the block qwen3, qwen2moe, qwen3moe and phi3 share.

The block is LLaMA's (pre-norm attention and FFN, RoPE, GQA) with what these architectures add: optional q/k/v
biases, optional per-head q/k RMS norms (qwen3), and an FFN that is an object of its own (dense SwiGLU here, a
mixture of experts in `qwenmoe.py`). These models never take the backend's one-call decode layer
(`Backend.plan_layer`): it knows neither the q/k norms nor a routed FFN, so `_layer_plans` is always None.

One block function serves one sequence and the batched forward alike (as in deepseek2): attention runs per
span (one sequence's rows over its own cache), every linear layer over all rows of a row group.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from tilellm.backend import Backend, LayerPlan, LayerProgram
from tilellm.backend.ops import rms_norm
from tilellm.quant import TensorView

from .base import Segment, SlotCache, vector
from .layers import add_qkv_biases
from .llama import LlamaModel

# one sequence's rows r0..r1-1 at positions p0.., with that sequence's K and V cache of this layer
Span = tuple[np.ndarray, np.ndarray, int, int, int]


class FFN(Protocol):
    """An FFN branch: the normed hidden states [T, n_embd] in (`norm` applied by the FFN, so a backend can
    fuse it with the activation's preparation), the branch's output [T, n_embd] out."""

    def __call__(self, be: Backend, h: np.ndarray, norm: np.ndarray, eps: float) -> np.ndarray: ...


class DenseFFN:
    """down(silu(gate x) * up x) of x = rms_norm(h): LLaMA's SwiGLU."""

    def __init__(self, gate: TensorView, up: TensorView, down: TensorView) -> None:
        self.gate, self.up, self.down = gate, up, down

    def __call__(self, be: Backend, h: np.ndarray, norm: np.ndarray, eps: float) -> np.ndarray:
        xp = be.prepare_rms_norm(h, norm, eps, self.gate.type)  # shared by gate and up
        g, u = be.matmul_many([self.gate, self.up], xp)
        return be.matmul(self.down, be.prepare_swiglu(g, u, self.down.type))


class Block:
    """One block's tensors: norms and biases as float32 vectors, q/k norms None where the file has none."""

    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "q_norm", "k_norm", "ffn_norm", "ffn")
    attn_norm: np.ndarray
    wq: TensorView
    wk: TensorView
    wv: TensorView
    wo: TensorView
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    q_norm: np.ndarray | None
    k_norm: np.ndarray | None
    ffn_norm: np.ndarray
    ffn: FFN

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


class GenericModel(LlamaModel):
    """The LLaMA model's loading, context, rope scaling and KV cache with `Block`s run op by op.

    A subclass sets `rope_mode` and implements `_ffn_of(i) -> FFN`; `qk_norm` says whether the per-head
    `attn_q_norm` / `attn_k_norm` tensors are required (True), absent (False) or taken when present (None).
    """

    rope_mode = "neox"
    qk_norm: bool | None = None
    rope_mscale = 1.0  # the rotated dims of q and k are multiplied by it after rope (LongRoPE's attn_factor)
    attn_scale: float | None = None  # the softmax scale; None: kq_mult / sqrt(head_dim)
    residual_scale = 1.0  # each branch's output is multiplied by it before the residual add (Granite)

    def _ffn_of(self, i: int) -> FFN:
        """Layer i's FFN (dense SwiGLU by default)."""
        hp, d, p = self.hparams, self.hparams.n_embd, f"blk.{i}."
        return DenseFFN(self._linear(p + "ffn_gate.weight", d, hp.n_ff), self._linear(p + "ffn_up.weight", d, hp.n_ff),
                        self._linear(p + "ffn_down.weight", hp.n_ff, d))

    def _qkv_of(self, i: int) -> tuple[TensorView, TensorView, TensorView]:
        """Layer i's q, k, v projections (separate tensors; phi3 splits a fused one)."""
        hp, d, p = self.hparams, self.hparams.n_embd, f"blk.{i}."
        q_dim, kv_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        return (self._linear(p + "attn_q.weight", d, q_dim), self._linear(p + "attn_k.weight", d, kv_dim),
                self._linear(p + "attn_v.weight", d, kv_dim))

    def _load_tensors(self) -> None:
        hp = self.hparams
        d, hd = hp.n_embd, hp.head_dim
        q_dim = hp.n_head * hd
        self._load_embeddings()
        self.blocks: list[Block] = []
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            opt: dict[str, Any] = self._attn_biases(p)
            if self.qk_norm is not False:
                for n in ("q", "k"):
                    t = self._tensor(p + f"attn_{n}_norm.weight", (hd,), optional=not self.qk_norm)
                    opt[f"{n}_norm"] = vector(t) if t is not None else None
            wq, wk, wv = self._qkv_of(i)
            self.blocks.append(Block(
                attn_norm=vector(self._tensor(p + "attn_norm.weight", (d,))), wq=wq, wk=wk, wv=wv,
                wo=self._linear(p + "attn_output.weight", q_dim, d),
                ffn_norm=vector(self._tensor(p + "ffn_norm.weight", (d,))), ffn=self._ffn_of(i), **opt))
        self.layers = []  # no DecoderLayerSpec: the one-call decode layer is never planned

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        """The input rows of token ids [T, n_embd]."""
        return self.tok_embd.rows(ids)

    def _layer_program(self, li: int, caches: dict[str, np.ndarray]) -> LayerProgram | None:
        """None: these blocks are not described as layer programs yet (q/k norms, soft-caps, fused tensors), so
        neither the one-call decode nor the batched path's one-call layers are planned for them."""
        return None

    def _layer_plans(self) -> list[LayerPlan] | None:
        """Never: see `_layer_program`."""
        return None

    def _block(self, li: int, B: Block, h: np.ndarray, cos: np.ndarray, sin: np.ndarray,
               spans: list[Span]) -> np.ndarray:
        """h [T, n_embd] through block li; each span's keys/values written to its cache, attention per span."""
        hp, be = self.hparams, self.backend
        T, H, Hkv, D = h.shape[0], hp.n_head, hp.n_head_kv, hp.head_dim
        xp = be.prepare_rms_norm(h, B.attn_norm, hp.rms_eps, B.wq.type)  # normed and quantized once, for q, k, v
        q, k, v = be.matmul_many([B.wq, B.wk, B.wv], xp)
        add_qkv_biases(B, q, k, v)
        q, k, v = q.reshape(T, H, D), k.reshape(T, Hkv, D), v.reshape(T, Hkv, D)
        if B.q_norm is not None:
            q = rms_norm(q, B.q_norm, hp.rms_eps)
        if B.k_norm is not None:
            k = rms_norm(k, B.k_norm, hp.rms_eps)
        q = self.rope.apply(np.ascontiguousarray(q), cos, sin)
        k = self.rope.apply(np.ascontiguousarray(k), cos, sin)
        if self.rope_mscale != 1.0:  # ggml scales cos and sin: the rotated dims only
            q[..., :hp.n_rot] *= np.float32(self.rope_mscale)
            k[..., :hp.n_rot] *= np.float32(self.rope_mscale)
        scale = self.attn_scale if self.attn_scale is not None else self.kq_mult / np.sqrt(D)
        att = np.empty((T, H * D), np.float32)
        for kc, vc, p0, r0, r1 in spans:
            p1 = p0 + r1 - r0
            kc[p0:p1] = self._f16_if_ggml(k[r0:r1])
            vc[p0:p1] = self._f16_if_ggml(v[r0:r1])
            a = self._attention(self._f16_if_ggml(q[r0:r1]), kc[:p1], vc[:p1], p0, scale)
            att[r0:r1] = a.reshape(r1 - r0, -1)
        o = be.matmul(B.wo, att)
        if self.residual_scale != 1.0:
            o *= np.float32(self.residual_scale)
        h = h + o
        y = B.ffn(be, h, B.ffn_norm, hp.rms_eps)
        if self.residual_scale != 1.0:
            y *= np.float32(self.residual_scale)
        return h + y

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        T, p0 = ids.size, self.n_past
        h = self._embed(ids)
        cos, sin = self.rope.span(p0, p0 + T)
        for li, B in enumerate(self.blocks):
            h = self._block(li, B, h, cos, sin, [(self.k_cache[li], self.v_cache[li], p0, 0, T)])
        self.n_past = p0 + T
        return h

    # ------------------------------------------------------------------ several sequences (BatchedDecoder)
    def _forward_rows(self, cache: SlotCache, ids: np.ndarray, pos: np.ndarray, segs: list[Segment],
                      groups: list[slice]) -> np.ndarray:
        """`_forward` over the rows of several sequences, one row group (GEMM boundary) at a time."""
        h = np.array(self._embed(ids), dtype=np.float32)
        cos, sin = self.rope.tables(pos)
        kc, vc = cache.arrays["k"], cache.arrays["v"]
        for g in groups:
            gsegs = [s for s in segs if g.start <= s.r0 < g.stop]
            hg, cg, sg = h[g], cos[g], sin[g]
            for li, B in enumerate(self.blocks):
                spans = [(kc[s.slot, li], vc[s.slot, li], s.p0, s.r0 - g.start, s.r1 - g.start) for s in gsegs]
                hg = self._block(li, B, hg, cg, sg, spans)
            h[g] = hg
        return h
