"""Gemma 2: the `gemma2` GGUF architecture.

The block is Gemma 3's without the per-head q/k norms, plus attention logit soft-capping:

- embeddings times sqrt(n_embd); four RMS norms per block (before and after attention, before and after the
  FFN; the residual adds the post-normed branch); GELU(tanh)-gated FFN; NEOX rope with one base for all layers;
- attention scores capped: s -> cap * tanh(s / cap) before the mask and softmax (`attn_logit_softcapping`,
  50 by default), so attention is computed here in numpy (the backend's attention has no cap);
- sliding-window attention on alternate layers: layer i is local when i % pattern < pattern - 1 with pattern
  `attention.sliding_window_pattern` (2 when absent: layers 0, 2, 4, ... are local), window
  `attention.sliding_window` (4096 when absent);
- scale 1/sqrt(head_dim) (`attention.key_length`), except 27B (46 layers): 1/sqrt(n_embd / n_head), llama.cpp's
  rule (GGUF has no key for query_pre_attn_scalar); an explicit `gemma2.attention.scale` wins;
- output tied to the embeddings; final logits capped (`final_logit_softcapping`, 30 by default).

Norm weights: the converter stores Hugging Face's (1 + w), so they multiply directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from tilellm.backend import Backend
from tilellm.backend.ops import rms_norm
from tilellm.quant.kv import kv_load

from ..gguf.metadata import float_in, pos_float, pos_int
from .base import vector
from .generic import Block, GenericModel, Span
from .layers import gelu_tanh_ggml, gelu_tanh_mul

GEMMA2_27B_LAYERS = 46  # the one size whose query_pre_attn_scalar is n_embd / n_head
DEFAULT_WINDOW = 4096
DEFAULT_ATTN_SOFTCAP = 50.0
DEFAULT_FINAL_SOFTCAP = 30.0


@dataclass(frozen=True)
class Gemma2Params:
    """The Gemma 2 constants of a file (with Gemma 2's defaults, as llama.cpp takes them)."""

    window: int
    local_layers: tuple[bool, ...]
    attn_scale: float
    attn_softcap: float | None  # None: no capping (a file with 0)
    final_softcap: float | None
    embd_scale: float

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], n_layer: int, n_embd: int, n_head: int,
                      head_dim: int) -> "Gemma2Params":
        p = "gemma2."
        period = pos_int(md, p + "attention.sliding_window_pattern", 2)
        local = tuple(period > 1 and i % period < period - 1 for i in range(n_layer))
        if p + "attention.scale" in md:
            scale = pos_float(md, p + "attention.scale")
        elif n_layer == GEMMA2_27B_LAYERS:
            scale = 1.0 / math.sqrt(max(1, n_embd // n_head))
        else:
            scale = 1.0 / math.sqrt(head_dim)
        return cls(window=pos_int(md, p + "attention.sliding_window", DEFAULT_WINDOW), local_layers=local,
                   attn_scale=scale,
                   attn_softcap=float_in(md, p + "attn_logit_softcapping", DEFAULT_ATTN_SOFTCAP, low=0.0) or None,
                   final_softcap=float_in(md, p + "final_logit_softcapping", DEFAULT_FINAL_SOFTCAP, low=0.0) or None,
                   embd_scale=float(np.float32(math.sqrt(n_embd))))


def softcap_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float, cap: float | None,
                      window: int | None = None) -> np.ndarray:
    """Causal GQA attention with scores capped to (-cap, cap) by cap * tanh(s / cap) before the mask.

    q [T, H, D] at positions n_past.., k/v [S, Hkv, D] at positions 0..S-1 (S = n_past + T); with `window`,
    a query at p sees keys p-window+1..p. Returns [T, H, D]."""
    T, H, D = q.shape
    S, Hkv, _ = k.shape
    g = H // Hkv
    qs = np.ascontiguousarray(q.reshape(T, Hkv, g, D).transpose(1, 2, 0, 3)) * np.float32(scale)  # [Hkv, g, T, D]
    sc = np.matmul(qs, np.ascontiguousarray(k.transpose(1, 2, 0))[:, None])  # [Hkv, g, T, S]
    if cap is not None:
        sc /= np.float32(cap)
        np.tanh(sc, out=sc)
        sc *= np.float32(cap)
    kpos, qpos = np.arange(S)[None, :], (n_past + np.arange(T))[:, None]
    masked = kpos > qpos
    if window is not None:
        masked |= (qpos - kpos) >= window
    sc[..., masked] = -np.inf
    sc -= sc.max(-1, keepdims=True)
    np.exp(sc, out=sc)
    sc /= sc.sum(-1, keepdims=True)
    out = np.matmul(sc, np.ascontiguousarray(v.transpose(1, 0, 2))[:, None])  # [Hkv, g, T, D]
    return np.ascontiguousarray(out.transpose(2, 0, 1, 3)).reshape(T, H, D)


class _GeluFFN:
    """down(gelu_tanh(gate x) * up x) of x = rms_norm(h) (numerics "ggml": ggml's fp16 GELU table)."""

    def __init__(self, gate: Any, up: Any, down: Any, ggml: bool) -> None:
        self.gate, self.up, self.down, self.ggml = gate, up, down, ggml

    def __call__(self, be: Backend, h: np.ndarray, norm: np.ndarray, eps: float) -> np.ndarray:
        xp = be.prepare(rms_norm(h, norm, eps), self.gate.type)  # shared by gate and up
        g, u = be.matmul_many([self.gate, self.up], xp)
        act = gelu_tanh_ggml(g) * u if self.ggml else gelu_tanh_mul(g, u)
        return be.matmul(self.down, act)


class Gemma2Model(GenericModel):
    """Gemma 2 text decoder (2B, 9B, 27B) over the op-by-op LLaMA-shaped block."""

    rope_mode = "neox"
    qk_norm = False

    def _ffn_of(self, i: int) -> _GeluFFN:
        hp, d, p = self.hparams, self.hparams.n_embd, f"blk.{i}."
        return _GeluFFN(self._linear(p + "ffn_gate.weight", d, hp.n_ff), self._linear(p + "ffn_up.weight", d, hp.n_ff),
                        self._linear(p + "ffn_down.weight", hp.n_ff, d), self.numerics == "ggml")

    def _load_tensors(self) -> None:
        hp = self.hparams
        self.gparams = Gemma2Params.from_metadata(self.file.metadata, hp.n_layer, hp.n_embd, hp.n_head, hp.head_dim)
        super()._load_tensors()
        d = hp.n_embd
        self.output = self._linear("token_embd.weight", d, hp.n_vocab)  # always tied, as in llama.cpp
        self.post_attn_norms = [vector(self._tensor(f"blk.{i}.post_attention_norm.weight", (d,)))
                                for i in range(hp.n_layer)]
        self.post_ffn_norms = [vector(self._tensor(f"blk.{i}.post_ffw_norm.weight", (d,))) for i in range(hp.n_layer)]

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.tok_embd.rows(ids) * np.float32(self.gparams.embd_scale)

    def _block(self, li: int, B: Block, h: np.ndarray, cos: np.ndarray, sin: np.ndarray,
               spans: list[Span]) -> np.ndarray:
        hp, g, be = self.hparams, self.gparams, self.backend
        T, H, Hkv, D = h.shape[0], hp.n_head, hp.n_head_kv, hp.head_dim
        eps = hp.rms_eps
        xp = be.prepare(rms_norm(h, B.attn_norm, eps), B.wq.type)  # shared by q, k, v
        q, k, v = be.matmul_many([B.wq, B.wk, B.wv], xp)
        q = self.rope.apply(q.reshape(T, H, D), cos, sin)
        k = self.rope.apply(k.reshape(T, Hkv, D), cos, sin)
        v = v.reshape(T, Hkv, D)
        window = g.window if g.local_layers[li] else None
        att = np.empty((T, H * D), np.float32)
        for kc, vc, p0, r0, r1 in spans:
            p1 = p0 + r1 - r0
            self._kv_put(kc[p0:p1], self._f16_if_ggml(k[r0:r1]))
            self._kv_put(vc[p0:p1], self._f16_if_ggml(v[r0:r1]))
            k0 = 0 if window is None else max(0, p0 - window + 1)  # older keys are outside every query's window
            a = softcap_attention(self._f16_if_ggml(q[r0:r1]), kv_load(kc[k0:p1]), kv_load(vc[k0:p1]), p0 - k0,
                                  g.attn_scale,
                                  g.attn_softcap, window)
            att[r0:r1] = a.reshape(r1 - r0, -1)
        h = h + rms_norm(be.matmul(B.wo, att), self.post_attn_norms[li], eps)
        return h + rms_norm(B.ffn(be, h, B.ffn_norm, eps), self.post_ffn_norms[li], eps)

    def _head(self, h: np.ndarray) -> np.ndarray:
        out = super()._head(h)
        cap = self.gparams.final_softcap
        if cap is not None:
            np.tanh(out / np.float32(cap), out=out)
            out *= np.float32(cap)
        return out

