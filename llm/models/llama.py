"""The LLaMA-family decoder (llama, and its relatives with q/k/v biases or NEOX rope such as qwen2).

Every linear layer (q, k, v, o, gate, up, down, output) goes through `backend.matmul`; the rest
(RMSNorm, RoPE, attention, SwiGLU) is float32 numpy. Weights stay in the mapped file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilellm.backend import Backend, LayerProgram
from tilellm.quant import TensorView
from tilellm.quant.errors import GGUFError, UnsupportedError
from tilellm.quant.kv import kv_check_dims, kv_nbytes

from ..gguf.hparams import HParams, check_block_count
from ..gguf.metadata import float_in, str_of
from .base import BatchedDecoder, DecoderModel, Segment, SlotCache, vector
from .kvshift import RopedKeys
from .layers import Rope, add_qkv_biases
from .memory import check_kv_cache
from .yarn import YarnParams, yarn_inv_freq


@dataclass(frozen=True)
class LlamaLayer:
    """One LLaMA block's tensors: h += o(attn(rope(q), rope(k), v)) over RMSNorm(h, attn_norm), then
    h += down(silu(gate x) * up x) over x = RMSNorm(h, ffn_norm). Norms and biases are float32 vectors."""

    attn_norm: np.ndarray
    wq: TensorView
    wk: TensorView
    wv: TensorView
    wo: TensorView
    ffn_norm: np.ndarray
    w_gate: TensorView
    w_up: TensorView
    w_down: TensorView
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None


class LlamaModel(DecoderModel, BatchedDecoder):
    """A decoder-only transformer of the LLaMA shape; its KV cache holds `type_k` / `type_v` (default f16)."""

    rope_mode = "norm"  # llama GGUF files: q/k are stored permuted for adjacent-pair rotation
    ggml_f16_cache = True

    def __init__(self, file: Any, backend: Backend, n_ctx: int | None = None, n_batch: int = 512,
                 numerics: str = "default", *, type_k: Any = "f16", type_v: Any = "f16") -> None:
        self._bind(file, backend, numerics, type_k, type_v)
        md = file.metadata
        self.hparams = hp = HParams.from_metadata(md, self._vocab_size(file))
        check_block_count(md, file.tensors, hp.n_layer)
        self._init_context(n_ctx, n_batch)
        self._load_tensors()
        freqs = file.tensors.get("rope_freqs.weight")
        self.rope = Rope(hp.n_rot, hp.rope_base, self.rope_mode, vector(freqs) if freqs is not None else None)
        self.kq_mult = self._rope_scaling(file.metadata)
        if not (math.isfinite(self.kq_mult) and self.kq_mult > 0):
            raise GGUFError(f"the rope.scaling metadata gives an attention scale of {self.kq_mult}")
        kv_shape = (hp.n_layer, self.n_ctx, hp.n_head_kv, hp.head_dim)
        kv_check_dims(self.type_k, {"head_dim": hp.head_dim}, "type_k")
        kv_check_dims(self.type_v, {"head_dim": hp.head_dim}, "type_v")
        n = math.prod(kv_shape)
        check_kv_cache(kv_nbytes(n, self.type_k) + kv_nbytes(n, self.type_v), self.n_ctx, hp.n_ctx_train)
        self.k_cache = self._kv_zeros(kv_shape, "k")
        self.v_cache = self._kv_zeros(kv_shape, "v")
        self.n_past = 0

    def _rope_scaling(self, md: Any) -> float:
        """Apply `{arch}.rope.scaling.*` (linear or yarn) to the rope; returns the factor on the softmax scale."""
        hp = self.hparams
        p = f"{hp.arch}.rope.scaling."
        kind = str_of(md, p + "type", "none") or "none"
        factor = float_in(md, p + "factor", 0.0, low=0.0)
        if kind == "none" or (kind == "linear" and factor in (0.0, 1.0)):
            return 1.0
        if kind == "linear":  # positions divided by the factor
            if not factor > 0:
                raise GGUFError(f"metadata {p}factor must be > 0, got {factor}")
            self.rope.inv_freq = self.rope.inv_freq / factor
            return 1.0
        if kind == "yarn":
            y = YarnParams.from_metadata(md, hp.arch)
            assert y is not None  # None only for no scaling
            self.rope.inv_freq = yarn_inv_freq(hp.n_rot, hp.rope_base, y)
            # ggml's rope scales cos/sin by attn_factor * (1 + 0.1 ln factor): q.k grows by its square
            ms = y.attn_factor * ((1.0 + 0.1 * math.log(y.factor)) if y.ext_factor != 0 else 1.0)
            return ms * ms
        raise UnsupportedError(f"rope scaling type {kind!r} is not supported for {hp.arch!r} (linear, yarn)")

    def _load_tensors(self) -> None:
        hp = self.hparams
        d, hd = hp.n_embd, hp.head_dim
        q_dim, kv_dim = hp.n_head * hd, hp.n_head_kv * hd
        self._load_embeddings()
        self.layers: list[LlamaLayer] = []
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            biases = self._attn_biases(p)
            self.layers.append(LlamaLayer(
                attn_norm=vector(self._tensor(p + "attn_norm.weight", (d,))),
                wq=self._linear(p + "attn_q.weight", d, q_dim),
                wk=self._linear(p + "attn_k.weight", d, kv_dim),
                wv=self._linear(p + "attn_v.weight", d, kv_dim),
                wo=self._linear(p + "attn_output.weight", q_dim, d),
                ffn_norm=vector(self._tensor(p + "ffn_norm.weight", (d,))),
                w_gate=self._linear(p + "ffn_gate.weight", d, hp.n_ff),
                w_up=self._linear(p + "ffn_up.weight", d, hp.n_ff),
                w_down=self._linear(p + "ffn_down.weight", hp.n_ff, d),
                **biases))

    def _cache_arrays(self) -> dict[str, np.ndarray]:
        return {"k": self.k_cache, "v": self.v_cache}

    def _roped_keys(self) -> list[RopedKeys]:
        """Every layer's keys, their first n_rot values rotated by `self.rope`."""
        return [RopedKeys("k", tuple(range(self.hparams.n_layer)), 0, self.rope)]

    def _layer_program(self, li: int, caches: dict[str, np.ndarray]) -> LayerProgram | None:
        """The LLaMA block as a layer program: RMS norm + q/k/v, biases, rope, cache, attention, o, residual,
        RMS norm + gate/up, SwiGLU + down, residual."""
        hp, L = self.hparams, self.layers[li]
        E, H, Hkv, D, F = hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff
        qd, kvd = H * D, Hkv * D
        P = LayerProgram(E, hp.n_rot)
        qkv, att, o, gu, d = P.buffer(qd + 2 * kvd), P.buffer(qd), P.buffer(E), P.buffer(2 * F), P.buffer(E)
        kc, vc = P.cache(caches["k"]), P.cache(caches["v"])
        P.matmul([L.wq, L.wk, L.wv], P.H, qkv, E, pre="rms", norm=L.attn_norm, eps=hp.rms_eps)
        for off, b, n in ((qkv, L.bq, qd), (qkv + qd, L.bk, kvd), (qkv + qd + kvd, L.bv, kvd)):
            if b is not None:
                P.add(off, n, vec=b)
        neox = self.rope_mode == "neox"
        P.rope(qkv, H, D, neox)
        P.rope(qkv + qd, Hkv, D, neox)
        P.store(kc, qkv + qd, kvd)
        P.store(vc, qkv + qd + kvd, kvd)
        P.attention(qkv, att, kc, vc, H, Hkv, D, D, self.kq_mult / np.sqrt(hp.head_dim))
        P.matmul([L.wo], att, o, qd)
        P.add(P.H, E, src=o)
        P.matmul([L.w_gate, L.w_up], P.H, gu, E, pre="rms", norm=L.ffn_norm, eps=hp.rms_eps)
        P.matmul([L.w_down], gu, d, F, pre="swiglu", src2=gu + F)
        P.add(P.H, E, src=d)
        return P

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        hp, be = self.hparams, self.backend
        T, p0 = ids.size, self.n_past
        h = self.tok_embd.rows(ids)  # [T, n_embd]
        plans = self._layer_plans() if T == 1 else None
        if plans is not None:  # one token: each layer in one backend call (the same steps as below)
            h = self._decode_planned(plans, h, np.array([p0]))
            self.n_past = p0 + 1
            return h
        cos, sin = self.rope.span(p0, p0 + T)
        scale = self.kq_mult / np.sqrt(hp.head_dim)
        for li, L in enumerate(self.layers):
            xp = be.prepare_rms_norm(h, L.attn_norm, hp.rms_eps, L.wq.type)  # normed and quantized once, for q, k, v
            q, k, v = be.matmul_many([L.wq, L.wk, L.wv], xp)
            add_qkv_biases(L, q, k, v)
            q = self.rope.apply(q.reshape(T, hp.n_head, hp.head_dim), cos, sin)
            k = self.rope.apply(k.reshape(T, hp.n_head_kv, hp.head_dim), cos, sin)
            self._kv_put(self.k_cache[li, p0:p0 + T], self._f16_if_ggml(k))
            self._kv_put(self.v_cache[li, p0:p0 + T], self._f16_if_ggml(v.reshape(T, hp.n_head_kv, hp.head_dim)))
            att = self._attention(self._f16_if_ggml(q), self.k_cache[li, :p0 + T], self.v_cache[li, :p0 + T], p0, scale)
            h = h + be.matmul(L.wo, att.reshape(T, -1))
            xp = be.prepare_rms_norm(h, L.ffn_norm, hp.rms_eps, L.w_gate.type)  # shared by gate and up
            g, u = be.matmul_many([L.w_gate, L.w_up], xp)
            h = h + be.matmul(L.w_down, be.prepare_swiglu(g, u, L.w_down.type))
        self.n_past = p0 + T
        return h

    # ------------------------------------------------------------------ several sequences (BatchedDecoder)
    def _slot_arrays(self, n_slots: int, n_ctx: int) -> dict[str, np.ndarray]:
        hp = self.hparams
        shape = (n_slots, hp.n_layer, n_ctx, hp.n_head_kv, hp.head_dim)
        return {"k": self._kv_zeros(shape, "k"), "v": self._kv_zeros(shape, "v")}

    def _forward_rows(self, cache: SlotCache, ids: np.ndarray, pos: np.ndarray, segs: list[Segment],
                      groups: list[slice]) -> np.ndarray:
        """`_forward`'s steps over the rows of several sequences (a one-token segment goes through the one-call
        layers instead when the backend plans them: `BatchedDecoder._rows`)."""
        hp, be = self.hparams, self.backend
        T = ids.size
        h = self.tok_embd.rows(ids)
        scale = self.kq_mult / np.sqrt(hp.head_dim)
        kc, vc = cache.arrays["k"], cache.arrays["v"]
        cos, sin = self.rope.span(0, int(pos.max()) + 1)
        cos, sin = cos[pos], sin[pos]

        def rope(x: np.ndarray) -> np.ndarray:
            return self.rope.apply(x, cos, sin)
        for li, L in enumerate(self.layers):
            q, k, v = self._gemm(groups, [L.wq, L.wk, L.wv], be.prepare_rms_norm, (h,), L.attn_norm, hp.rms_eps,
                                 L.wq.type)
            add_qkv_biases(L, q, k, v)
            q = rope(q.reshape(T, hp.n_head, hp.head_dim))
            k = rope(k.reshape(T, hp.n_head_kv, hp.head_dim))
            v = v.reshape(T, hp.n_head_kv, hp.head_dim)
            att = np.empty((T, hp.n_head * hp.head_dim), np.float32)
            for s in segs:  # each sequence over its own cache, as a single sequence would
                p1 = s.p0 + s.n
                self._kv_put(kc[s.slot, li, s.p0:p1], self._f16_if_ggml(k[s.r0:s.r1]))
                self._kv_put(vc[s.slot, li, s.p0:p1], self._f16_if_ggml(v[s.r0:s.r1]))
                a = self._attention(self._f16_if_ggml(q[s.r0:s.r1]), kc[s.slot, li, :p1], vc[s.slot, li, :p1],
                                    s.p0, scale)
                att[s.r0:s.r1] = a.reshape(s.n, -1)
            (o,) = self._gemm(groups, [L.wo], None, (att,))
            h = h + o
            g_, u_ = self._gemm(groups, [L.w_gate, L.w_up], be.prepare_rms_norm, (h,), L.ffn_norm, hp.rms_eps,
                                L.w_gate.type)
            (d,) = self._gemm(groups, [L.w_down], be.prepare_swiglu, (g_, u_), L.w_down.type)
            h = h + d
        return h


class Qwen2Model(LlamaModel):
    """qwen2: the LLaMA block with q/k/v biases (loaded when present) and NEOX-style rope."""

    rope_mode = "neox"
