"""Gemma 3 (text): the `gemma3` GGUF architecture.

Differences from the LLaMA block (`LlamaModel`, whose loading helpers, `eval` batching and KV cache
this class reuses):

- token embeddings are multiplied by sqrt(n_embd) before the first layer;
- RMSNorm everywhere, with four norms per block: before attention (`attn_norm`), after the attention
  output projection (`post_attention_norm`), before the FFN (`ffn_norm`) and after it (`post_ffw_norm`);
  the residual adds the *post-normed* branch;
- q and k are RMS-normalised per head (`attn_q_norm`, `attn_k_norm`, length head_dim) before RoPE;
- the FFN is GELU(tanh)-gated: down(gelu(gate(x)) * up(x));
- NEOX-style RoPE; local (sliding-window) layers and global layers alternate 5:1 (every sixth layer,
  i.e. layers 5, 11, 17, ... are global) unless the file says otherwise; local layers use their own
  rope base (10000, the value Gemma 3 was trained with, unless the file gives
  `gemma3.rope.local_freq_base`) and see only the last `attention.sliding_window` positions;
  global layers use `rope.freq_base` (and a linear `rope.scaling.factor` when present);
- attention scores are scaled by 1/sqrt(query_pre_attn_scalar). Gemma 3 sets query_pre_attn_scalar to
  the head size (`attention.key_length`) for every size except 27B, where it is n_embd / n_head (168 vs
  a head size of 128); GGUF has no key for it, so like llama.cpp we recognise 27B by its 62 layers.
  An explicit `gemma3.attention.scale` in the file wins;
- output weights are tied to the embeddings when `output.weight` is absent; logits are soft-capped
  (cap * tanh(logits / cap)) when the file has `final_logit_softcapping` (Gemma 2 does, Gemma 3 does not).

RMSNorm weights: Hugging Face's Gemma norms compute x_hat * (1 + w); llama.cpp's converter stores
(1 + w) in the GGUF (it adds 1 to every tensor named `*norm.weight` for gemma, gemma2 and gemma3), so the
file's weights multiply directly, exactly as in the LLaMA block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from tilellm.backend import Backend, LayerProgram
from tilellm.backend.ops import rms_norm
from tilellm.quant import TensorView
from tilellm.quant.errors import GGUFError

from ..gguf.hparams import rope_base
from ..gguf.metadata import as_list, float_in, nonneg_int, pos_float, pos_int, str_of
from .base import Segment, SlotCache, vector
from .layers import Rope, gelu_tanh_ggml, gelu_tanh_mul
from .llama import LlamaModel

# Gemma 3's published defaults for what older GGUF files do not state.
DEFAULT_SWA_PERIOD = 6  # five local layers, then one global
DEFAULT_LOCAL_ROPE_BASE = 10000.0
GEMMA3_27B_LAYERS = 62  # the one size whose query_pre_attn_scalar is n_embd / n_head


@dataclass(frozen=True)
class Gemma3Params:
    """The Gemma-specific constants, read from GGUF metadata (with Gemma 3's defaults)."""

    sliding_window: int | None  # None: every layer is global
    local_layers: tuple[bool, ...]  # per layer: True = sliding-window attention with the local rope base
    rope_base_local: float
    rope_scale_global: float  # linear rope scaling factor of the global layers (1 = none)
    attn_scale: float
    final_softcap: float | None
    embd_scale: float

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], n_layer: int, n_embd: int, n_head: int,
                      head_dim: int) -> "Gemma3Params":
        arch = str_of(md, "general.architecture", "gemma3")
        p = f"{arch}."
        window = nonneg_int(md, p + "attention.sliding_window", 0) or None
        key = p + "attention.sliding_window_pattern"
        pattern = md.get(key)
        if window is None:
            local = (False,) * n_layer
        elif pattern is None or np.ndim(pattern) == 0:
            period = pos_int(md, key, DEFAULT_SWA_PERIOD)
            local = tuple(period > 1 and (i % period) < period - 1 for i in range(n_layer))
        else:  # one flag per layer
            flags = as_list(pattern, key)
            if not all(isinstance(x, (bool, np.bool_)) or (isinstance(x, (int, np.integer)) and x in (0, 1))
                       for x in flags):
                raise GGUFError(f"metadata {key!r} must be an integer or an array of bools")
            if len(flags) != n_layer:
                raise GGUFError(f"metadata {key!r} has {len(flags)} entries for {n_layer} layers")
            local = tuple(bool(x) for x in flags)
        base_local = rope_base(md, p + "rope.local_freq_base", DEFAULT_LOCAL_ROPE_BASE)
        scale_global = 1.0
        if str_of(md, p + "rope.scaling.type", "none") == "linear":
            scale_global = float_in(md, p + "rope.scaling.factor", 1.0, low=0.0) or 1.0
        if p + "attention.scale" in md:
            attn_scale = pos_float(md, p + "attention.scale")
        elif n_layer == GEMMA3_27B_LAYERS and arch == "gemma3":
            attn_scale = 1.0 / math.sqrt(max(1, n_embd // n_head))
        else:
            attn_scale = 1.0 / math.sqrt(head_dim)
        cap = float_in(md, p + "final_logit_softcapping", 0.0, low=0.0) or None
        return cls(sliding_window=window, local_layers=local, rope_base_local=base_local,
                   rope_scale_global=scale_global, attn_scale=attn_scale, final_softcap=cap,
                   embd_scale=float(np.float32(math.sqrt(n_embd))))


class _GemmaLayer:
    """One Gemma 3 block's tensors (norms as float32 vectors) and whether it attends locally."""

    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "q_norm", "k_norm", "post_attn_norm",
                 "ffn_norm", "w_gate", "w_up", "w_down", "post_ffn_norm", "local", "qk_norm")
    attn_norm: np.ndarray
    wq: TensorView
    wk: TensorView
    wv: TensorView
    wo: TensorView
    q_norm: np.ndarray
    k_norm: np.ndarray
    post_attn_norm: np.ndarray
    ffn_norm: np.ndarray
    w_gate: TensorView
    w_up: TensorView
    w_down: TensorView
    post_ffn_norm: np.ndarray
    local: bool
    qk_norm: np.ndarray  # q_norm for each q head, then k_norm for each kv head: [H + Hkv, head_dim]


class Gemma3Model(LlamaModel):
    """Gemma 3 text decoder over the LLaMA model's loading, batching and float32 KV cache."""

    rope_mode = "neox"

    def __init__(self, file: Any, backend: Backend, n_ctx: int | None = None, n_batch: int = 512,
                 numerics: str = "default") -> None:
        super().__init__(file, backend, n_ctx, n_batch, numerics)
        hp, g = self.hparams, self.gparams
        # the base class built `self.rope` with the global base; the global layers may be linearly scaled
        scale = g.rope_scale_global
        self.rope_global = self.rope if scale == 1.0 else Rope(
            hp.n_rot, hp.rope_base, self.rope_mode, np.full(hp.n_rot // 2, scale))
        self.rope_local = Rope(hp.n_rot, g.rope_base_local, self.rope_mode)

    def _load_tensors(self) -> None:
        hp = self.hparams
        self.gparams = Gemma3Params.from_metadata(self.file.metadata, hp.n_layer, hp.n_embd, hp.n_head, hp.head_dim)
        d, hd = hp.n_embd, hp.head_dim
        q_dim, kv_dim = hp.n_head * hd, hp.n_head_kv * hd
        self._load_embeddings()
        self.layers: list[_GemmaLayer] = []  # type: ignore[assignment]
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            L = _GemmaLayer()
            L.attn_norm = vector(self._tensor(p + "attn_norm.weight", (d,)))
            L.wq = self._linear(p + "attn_q.weight", d, q_dim)
            L.wk = self._linear(p + "attn_k.weight", d, kv_dim)
            L.wv = self._linear(p + "attn_v.weight", d, kv_dim)
            L.wo = self._linear(p + "attn_output.weight", q_dim, d)
            L.q_norm = vector(self._tensor(p + "attn_q_norm.weight", (hd,)))
            L.k_norm = vector(self._tensor(p + "attn_k_norm.weight", (hd,)))
            L.post_attn_norm = vector(self._tensor(p + "post_attention_norm.weight", (d,)))
            L.ffn_norm = vector(self._tensor(p + "ffn_norm.weight", (d,)))
            L.w_gate = self._linear(p + "ffn_gate.weight", d, hp.n_ff)
            L.w_up = self._linear(p + "ffn_up.weight", d, hp.n_ff)
            L.w_down = self._linear(p + "ffn_down.weight", hp.n_ff, d)
            L.post_ffn_norm = vector(self._tensor(p + "post_ffw_norm.weight", (d,)))
            L.local = self.gparams.local_layers[i]
            # q/k norms as one [H + Hkv, D] weight (q and k are normed and roped together); the matmuls stay
            # separate, straight off the mapping (why: docs/gemma3.md, "Speed work")
            L.qk_norm = np.concatenate([np.broadcast_to(L.q_norm, (hp.n_head, hd)),
                                        np.broadcast_to(L.k_norm, (hp.n_head_kv, hd))])
            self.layers.append(L)
        self._head_views = _row_blocks(self.output, HEAD_BLOCK_ROWS)

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.tok_embd.rows(ids) * np.float32(self.gparams.embd_scale)

    def _layer_rope(self, li: int) -> Rope:
        return self.rope_local if self.layers[li].local else self.rope_global

    def _program_key(self) -> Any:
        return self.gparams  # the window is part of the programs (a test shrinks it after loading)

    def _layer_program(self, li: int, caches: dict[str, np.ndarray]) -> LayerProgram:
        """The Gemma 3 block as a layer program: RMS norm + q/k/v, per-head q/k norms, NEOX rope (the layer's
        base), cache, attention (sliding window on local layers), o, post-attention norm, residual, RMS norm +
        gate/up, GELU(tanh) gating + down, post-FFN norm, residual."""
        hp, g, L = self.hparams, self.gparams, self.layers[li]
        E, H, Hkv, D, F, eps = hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff, hp.rms_eps
        qd, kvd = H * D, Hkv * D
        P = LayerProgram(E, hp.n_rot)
        qkv, att, o, gu, y = P.buffer(qd + 2 * kvd), P.buffer(qd), P.buffer(E), P.buffer(2 * F), P.buffer(E)
        kc, vc = P.cache(caches["k"]), P.cache(caches["v"])
        P.matmul([L.wq, L.wk, L.wv], P.H, qkv, E, pre="rms", norm=L.attn_norm, eps=eps)
        P.rms_norm(qkv, qkv, L.q_norm, eps, D, rows=H, ld=D)
        P.rms_norm(qkv + qd, qkv + qd, L.k_norm, eps, D, rows=Hkv, ld=D)
        P.rope(qkv, H, D, neox=True)
        P.rope(qkv + qd, Hkv, D, neox=True)
        P.store(kc, qkv + qd, kvd)
        P.store(vc, qkv + qd + kvd, kvd)
        window = g.sliding_window if L.local and g.sliding_window is not None else 0
        P.attention(qkv, att, kc, vc, H, Hkv, D, D, g.attn_scale, window=window)
        P.matmul([L.wo], att, o, qd)
        P.rms_norm(o, o, L.post_attn_norm, eps, E)
        P.add(P.H, E, src=o)
        P.matmul([L.w_gate, L.w_up], P.H, gu, E, pre="rms", norm=L.ffn_norm, eps=eps)
        P.matmul([L.w_down], gu, y, F, pre="geglu", src2=gu + F)
        P.rms_norm(y, y, L.post_ffn_norm, eps, E)
        P.add(P.H, E, src=y)
        return P

    def _head(self, h: np.ndarray) -> np.ndarray:
        """Final norm, tied output projection (in row blocks: bounded memory on the dequantizing path), softcap."""
        x = rms_norm(h, self.out_norm, self.hparams.rms_eps)
        be = self.backend
        out = np.empty((x.shape[0], self.n_vocab), np.float32)
        # one call when the backend runs the type natively (nothing is dequantized whole): the blocks
        # would cost a matmul call and a copy each (262144 rows: 8 blocks per token)
        if len(self._head_views) == 1 or be.is_native(self.output.type):
            be.matmul(self.output, x, out=out)
        else:
            xp = be.prepare(x, self.output.type)
            for r0, view in self._head_views:
                out[:, r0:r0 + view.n_rows] = be.matmul(view, xp)
        cap = self.gparams.final_softcap
        if cap is not None:
            np.tanh(out / np.float32(cap), out=out)
            out *= np.float32(cap)
        return out

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        hp, g, be = self.hparams, self.gparams, self.backend
        T, p0 = ids.size, self.n_past
        H, Hkv, D = hp.n_head, hp.n_head_kv, hp.head_dim
        eps = hp.rms_eps
        h = self._embed(ids)  # [T, n_embd]
        plans = self._layer_plans() if T == 1 else None
        if plans is not None:  # one token: each layer in one backend call
            h = self._decode_planned(plans, h, np.array([p0]))
            self.n_past = p0 + 1
            return h
        pos = np.arange(p0, p0 + T)
        tables = {False: self.rope_global.tables(pos), True: self.rope_local.tables(pos)}
        for li, L in enumerate(self.layers):
            x = rms_norm(h, L.attn_norm, eps)
            xp = be.prepare(x, L.wq.type)  # shared by q, k (and v when its type quantizes activations alike)
            q, k, v = be.matmul_many([L.wq, L.wk, L.wv], xp)
            qk = np.concatenate([q.reshape(T, H, D), k.reshape(T, Hkv, D)], 1)
            # per-head q/k norms and rope on q and k together (rows are independent)
            qk = rms_norm(qk, L.qk_norm, eps)
            rope = self.rope_local if L.local else self.rope_global
            cos, sin = tables[L.local]
            rope.apply(qk, cos, sin)
            q = qk[:, :H]
            self.k_cache[li, p0:p0 + T] = self._f16_if_ggml(qk[:, H:])
            self.v_cache[li, p0:p0 + T] = self._f16_if_ggml(v.reshape(T, Hkv, D))
            q = self._f16_if_ggml(q)
            if L.local and g.sliding_window is not None:
                k0 = max(0, p0 - g.sliding_window + 1)  # older keys are outside every query's window
                # positions relative to k0: only differences matter to causality and the window
                att = self._attention(q, self.k_cache[li, k0:p0 + T], self.v_cache[li, k0:p0 + T], p0 - k0,
                                      g.attn_scale, window=g.sliding_window)
            else:
                att = self._attention(q, self.k_cache[li, :p0 + T], self.v_cache[li, :p0 + T], p0, g.attn_scale)
            o = be.matmul(L.wo, att.reshape(T, H * D))
            h += rms_norm(o, L.post_attn_norm, eps)
            x = rms_norm(h, L.ffn_norm, eps)
            xp = be.prepare(x, L.w_gate.type)  # shared by gate and up
            gate, up = be.matmul_many([L.w_gate, L.w_up], xp)
            act = gelu_tanh_mul(gate, up) if self.numerics != "ggml" else gelu_tanh_ggml(gate) * up
            y = be.matmul(L.w_down, act)
            h += rms_norm(y, L.post_ffn_norm, eps)
        self.n_past = p0 + T
        return h


    # ------------------------------------------------------------------ several sequences (BatchedDecoder)
    def _forward_rows(self, cache: SlotCache, ids: np.ndarray, pos: np.ndarray, segs: list[Segment],
                      groups: list[slice]) -> np.ndarray:
        """`_forward`'s steps over the rows of several sequences; the sliding window per sequence."""
        hp, g, be = self.hparams, self.gparams, self.backend
        T = ids.size
        H, Hkv, D = hp.n_head, hp.n_head_kv, hp.head_dim
        eps = hp.rms_eps
        h = self._embed(ids)
        tables = {False: self.rope_global.tables(pos), True: self.rope_local.tables(pos)}
        kc, vc = cache.arrays["k"], cache.arrays["v"]
        for li, L in enumerate(self.layers):
            q, k, v = self._gemm(groups, [L.wq, L.wk, L.wv], _normed, (h,), be, L.attn_norm, eps, L.wq.type)
            qk = np.concatenate([q.reshape(T, H, D), k.reshape(T, Hkv, D)], 1)
            qk = rms_norm(qk, L.qk_norm, eps)
            rope = self.rope_local if L.local else self.rope_global
            cos, sin = tables[L.local]
            rope.apply(qk, cos, sin)
            v = v.reshape(T, Hkv, D)
            att = np.empty((T, H * D), np.float32)
            for s in segs:  # each sequence over its own cache (and window), as a single sequence would
                p0, p1 = s.p0, s.p0 + s.n
                kc[s.slot, li, p0:p1] = self._f16_if_ggml(qk[s.r0:s.r1, H:])
                vc[s.slot, li, p0:p1] = self._f16_if_ggml(v[s.r0:s.r1])
                qs = self._f16_if_ggml(qk[s.r0:s.r1, :H])
                if L.local and g.sliding_window is not None:
                    k0 = max(0, p0 - g.sliding_window + 1)
                    a = self._attention(qs, kc[s.slot, li, k0:p1], vc[s.slot, li, k0:p1], p0 - k0, g.attn_scale,
                                        window=g.sliding_window)
                else:
                    a = self._attention(qs, kc[s.slot, li, :p1], vc[s.slot, li, :p1], p0, g.attn_scale)
                att[s.r0:s.r1] = a.reshape(s.n, H * D)
            (o,) = self._gemm(groups, [L.wo], None, (att,))
            h += rms_norm(o, L.post_attn_norm, eps)
            gate, up = self._gemm(groups, [L.w_gate, L.w_up], _normed, (h,), be, L.ffn_norm, eps, L.w_gate.type)
            act = gelu_tanh_mul(gate, up) if self.numerics != "ggml" else gelu_tanh_ggml(gate) * up
            (y,) = self._gemm(groups, [L.w_down], None, (act,))
            h += rms_norm(y, L.post_ffn_norm, eps)
        return h


def _normed(x: np.ndarray, be: Backend, w: np.ndarray, eps: float, weight_type: Any) -> Any:
    """rms_norm(x, w, eps) prepared for `weight_type` (the gemma block's numpy norm, then the backend's prepare)."""
    return be.prepare(rms_norm(x, w, eps), weight_type)


# Output-projection rows per backend call: 262144-row vocabularies would otherwise be dequantized whole
# (640 MB of float32 for Gemma 3 270M) by backends that dequantize per call.
HEAD_BLOCK_ROWS = 32768


def _row_blocks(t: TensorView, rows: int) -> list[tuple[int, TensorView]]:
    """`t` as consecutive row blocks `(first_row, view)`, each a zero-copy TensorView of at most `rows` rows."""
    if t.n_rows <= rows or len(t.shape) != 2:
        return [(0, t)]
    out = []
    for r0 in range(0, t.n_rows, rows):
        r1 = min(t.n_rows, r0 + rows)
        out.append((r0, TensorView(f"{t.name}[{r0}:{r1}]", (t.k, r1 - r0), t.type, t.data[r0:r1])))
    return out

