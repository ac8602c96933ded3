"""The LLaMA-family decoder (llama, and its relatives with q/k/v biases or NEOX rope such as qwen2).

Every linear layer (q, k, v, o, gate, up, down, output) goes through `backend.matmul`; the rest
(RMSNorm, RoPE, attention, SwiGLU) is float32 numpy. Weights stay in the mapped file.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from tilellm.backend import Backend, DecoderLayerSpec, LayerPlan, LayerShape
from tilellm.quant.errors import GGUFError, UnsupportedError

from ..gguf.hparams import HParams, check_block_count
from ..gguf.metadata import float_in, str_of
from .base import BatchedDecoder, DecoderModel, Segment, SlotCache, check_numerics, vector
from .layers import Rope
from .memory import check_kv_cache
from .yarn import YarnParams, yarn_inv_freq


class LlamaModel(DecoderModel, BatchedDecoder):
    """A decoder-only transformer of the LLaMA shape with a float32 KV cache."""

    rope_mode = "norm"  # llama GGUF files: q/k are stored permuted for adjacent-pair rotation

    def __init__(self, file: Any, backend: Backend, n_ctx: int | None = None, n_batch: int = 512,
                 numerics: str = "default") -> None:
        self.file = file
        self.backend = backend
        self.numerics = check_numerics(numerics)
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
        check_kv_cache(2 * 4 * math.prod(kv_shape), self.n_ctx, hp.n_ctx_train)  # float32 K and V
        self.k_cache = np.zeros(kv_shape, np.float32)
        self.v_cache = np.zeros(kv_shape, np.float32)
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
        self.tok_embd = self._tensor("token_embd.weight", (d, hp.n_vocab))
        self.out_norm = vector(self._tensor("output_norm.weight", (d,)))
        self.output = self._linear("output.weight", d, hp.n_vocab, optional=True) or self._linear(
            "token_embd.weight", d, hp.n_vocab)  # tied embeddings
        shape = LayerShape(n_embd=d, n_head=hp.n_head, n_head_kv=hp.n_head_kv, head_dim=hd, n_rot=hp.n_rot,
                           n_ff=hp.n_ff, rope_neox=self.rope_mode == "neox", eps=hp.rms_eps)
        self.layers: list[DecoderLayerSpec] = []
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            biases = {}
            for b, dim in (("bq", q_dim), ("bk", kv_dim), ("bv", kv_dim)):
                t = self._tensor(p + f"attn_{b[1]}.bias", (dim,), optional=True)
                biases[b] = vector(t) if t is not None else None
            self.layers.append(DecoderLayerSpec(
                shape=shape,
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

    def _layer_plans(self) -> list[LayerPlan] | None:
        """Per-layer plans for the backend's one-call decode step (`Backend.plan_layer`), made once; None when
        the backend does not handle a layer, or numerics="ggml" (whose fp16 K/V rounding it lacks)."""
        be = self.backend
        cached = getattr(self, "_plans_cache", None)
        if cached is not None and cached[0] is be:
            return cached[1]
        out: list[LayerPlan] | None = None
        if self.numerics == "default":
            out = []
            for li, L in enumerate(self.layers):
                p = be.plan_layer(L, self.k_cache[li], self.v_cache[li])
                if p is None:
                    out = None
                    break
                out.append(p)
        self._plans_cache = (be, out)
        return out

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        hp, be = self.hparams, self.backend
        T, p0 = ids.size, self.n_past
        h = self.tok_embd.rows(ids)  # [T, n_embd]
        cos, sin = self.rope.span(p0, p0 + T)
        scale = self.kq_mult / np.sqrt(hp.head_dim)
        plans = self._layer_plans() if T == 1 else None
        if plans is not None:  # one token: each layer in one C call (the same steps as below)
            h = np.ascontiguousarray(h, dtype=np.float32)
            for P in plans:
                be.decode_layer(P, h, cos, sin, p0, scale)
            self.n_past = p0 + 1
            return h
        for li, L in enumerate(self.layers):
            xp = be.prepare_rms_norm(h, L.attn_norm, hp.rms_eps, L.wq.type)  # normed and quantized once, for q, k, v
            q, k, v = be.matmul_many([L.wq, L.wk, L.wv], xp)
            if L.bq is not None:
                q += L.bq
            if L.bk is not None:
                k += L.bk
            if L.bv is not None:
                v += L.bv
            q = self.rope.apply(q.reshape(T, hp.n_head, hp.head_dim), cos, sin)
            k = self.rope.apply(k.reshape(T, hp.n_head_kv, hp.head_dim), cos, sin)
            self.k_cache[li, p0:p0 + T] = self._f16_if_ggml(k)
            self.v_cache[li, p0:p0 + T] = self._f16_if_ggml(v.reshape(T, hp.n_head_kv, hp.head_dim))
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
        return {"k": np.zeros(shape, np.float32), "v": np.zeros(shape, np.float32)}

    def _slot_plans(self, cache: SlotCache, slot: int) -> list[LayerPlan] | None:
        """`_layer_plans` over slot `slot`'s caches (made once per slot), or None where `_forward` has none."""
        if self._layer_plans() is None:
            return None
        key = (self.backend, slot)
        if key not in cache.plans:
            kc, vc = cache.arrays["k"], cache.arrays["v"]
            made = [self.backend.plan_layer(L, kc[slot, li], vc[slot, li]) for li, L in enumerate(self.layers)]
            cache.plans[key] = None if any(p is None for p in made) else made
        return cache.plans[key]

    def _row_rope(self, segs: list[Segment], cos: np.ndarray, sin: np.ndarray) -> Any:
        """Rope of the batch's rows [T, H, D], in place: a one-token segment with the arithmetic of the one-call
        decode layer when `_forward` would use it for that token (its rope rounds differently from numpy's),
        the others as `_forward` does for several tokens."""
        fused = self.numerics == "default" and self._layer_plans() is not None
        one = np.array([s.r0 for s in segs if s.n == 1], np.int64) if fused else np.empty(0, np.int64)
        T = cos.shape[0]
        fma = bool(getattr(self.backend, "fma_contracted", True))
        if one.size == 0:
            return lambda x: self.rope.apply(x, cos, sin)
        if one.size == T:
            return lambda x: self.rope.apply_like_decode_layer(x, cos, sin, fma)
        rest = np.setdiff1d(np.arange(T), one)
        c1, s1, c2, s2 = cos[one], sin[one], cos[rest], sin[rest]

        def mixed(x: np.ndarray) -> np.ndarray:
            x[one] = self.rope.apply_like_decode_layer(x[one], c1, s1, fma)
            x[rest] = self.rope.apply(np.ascontiguousarray(x[rest]), c2, s2)
            return x
        return mixed

    def _forward_rows(self, cache: SlotCache, ids: np.ndarray, pos: np.ndarray, segs: list[Segment],
                      groups: list[slice]) -> np.ndarray:
        """`_forward`'s unfused steps over the rows of several sequences (the one-call decode layer takes one
        token; its bits are kept by `_row_rope`: its GEMMs and attention are the separate calls')."""
        hp, be = self.hparams, self.backend
        T = ids.size
        h = self.tok_embd.rows(ids)
        scale = self.kq_mult / np.sqrt(hp.head_dim)
        kc, vc = cache.arrays["k"], cache.arrays["v"]
        plans = self._slot_plans(cache, segs[0].slot) if T == 1 else None
        if plans is not None:  # one token (a sequence alone): `_forward`'s one-call layers, on its slot's cache
            p0 = segs[0].p0
            c1, s1 = self.rope.span(p0, p0 + 1)
            h = np.ascontiguousarray(h, dtype=np.float32)
            for P in plans:
                be.decode_layer(P, h, c1, s1, p0, scale)
            return h
        cos, sin = self.rope.span(0, int(pos.max()) + 1)
        cos, sin = cos[pos], sin[pos]
        rope = self._row_rope(segs, cos, sin)
        for li, L in enumerate(self.layers):
            q, k, v = self._gemm(groups, [L.wq, L.wk, L.wv], be.prepare_rms_norm, (h,), L.attn_norm, hp.rms_eps,
                                 L.wq.type)
            if L.bq is not None:
                q += L.bq
            if L.bk is not None:
                k += L.bk
            if L.bv is not None:
                v += L.bv
            q = rope(q.reshape(T, hp.n_head, hp.head_dim))
            k = rope(k.reshape(T, hp.n_head_kv, hp.head_dim))
            v = v.reshape(T, hp.n_head_kv, hp.head_dim)
            att = np.empty((T, hp.n_head * hp.head_dim), np.float32)
            for s in segs:  # each sequence over its own cache, as a single sequence would
                p1 = s.p0 + s.n
                kc[s.slot, li, s.p0:p1] = self._f16_if_ggml(k[s.r0:s.r1])
                vc[s.slot, li, s.p0:p1] = self._f16_if_ggml(v[s.r0:s.r1])
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
