"""The LLaMA-family decoder (llama, and its relatives with q/k/v biases or NEOX rope such as qwen2).

Every linear layer (q, k, v, o, gate, up, down, output) goes through `backend.matmul`; the rest
(RMSNorm, RoPE, attention, SwiGLU) is float32 numpy. Weights stay in the mapped file.
"""
from __future__ import annotations

import math

from typing import Any, Sequence

import numpy as np

from tilellm.errors import ContextOverflowError, NumericalError, GGUFError, UnsupportedError
from tilellm.backend.protocol import matmul_many, prepare_normed, prepare_swiglu
from tilellm.quant import GGMLType, TensorView

from .hparams import HParams
from .layers import Rope, causal_attention


def _vector(t: TensorView) -> np.ndarray:
    """A 1-D parameter (norm weight, bias) as float32 — a view when it is stored as F32."""
    if t.type == GGMLType.F32:
        return t.data.view(np.float32).reshape(-1)
    return t.dequantize().reshape(-1)


class _Layer:
    __slots__ = ("attn_norm", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "ffn_norm", "w_gate", "w_up", "w_down")


class DecoderModel:
    """What every decoder shares: context/batch bookkeeping, token validation, batching, tensor lookup, the head.

    A subclass sets `file`, `backend`, `hparams` (with `arch`, `n_vocab`, `n_ctx_train`, `rms_eps`), calls
    `_init_context`, loads `out_norm` / `output`, and implements `_forward(ids) -> hidden [T, n_embd]`, which
    must advance `n_past`.
    """

    numerics = "default"  # "ggml": llama.cpp's rounding where it differs (set by tilellm.load)

    file: Any
    backend: Any
    hparams: Any
    out_norm: np.ndarray
    output: TensorView
    n_ctx: int
    n_batch: int
    n_past: int

    def _init_context(self, n_ctx: int | None, n_batch: int) -> None:
        """Validate and store n_ctx (None: min(trained, 4096); 0: trained) and n_batch."""
        n_train = self.hparams.n_ctx_train
        if n_ctx is None:
            n_ctx = min(n_train, 4096)
        elif n_ctx == 0:
            n_ctx = n_train
        if int(n_ctx) < 1:
            raise ValueError(f"n_ctx must be >= 1 (or 0 for the model's {n_train}), got {n_ctx}")
        if int(n_batch) < 1:
            raise ValueError(f"n_batch must be >= 1, got {n_batch}")
        self.n_ctx, self.n_batch = int(n_ctx), int(n_batch)
        self.n_past = 0

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _vocab_size(file: Any) -> int:
        emb = file.tensors.get("token_embd.weight")
        if emb is None:
            raise GGUFError("missing required tensor 'token_embd.weight'")
        return emb.n_rows

    def _tensor(self, name: str, shape: Sequence[int] | None, optional: bool = False) -> TensorView | None:
        t = self.file.tensors.get(name)
        if t is None:
            if optional:
                return None
            raise GGUFError(f"missing required tensor {name!r} for architecture {self.hparams.arch!r}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise GGUFError(f"tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}")
        return t

    def _linear(self, name: str, k: int, m: int, optional: bool = False) -> TensorView | None:
        t = self._tensor(name, (k, m), optional)
        if t is not None and not self.backend.supports(t.type):
            raise UnsupportedError(f"tensor {name!r} has type {t.type.name}, which backend {self.backend.name!r} "
                                   f"does not support")
        return t

    # ------------------------------------------------------------------ running
    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    def reset(self) -> None:
        """Forget the context (the KV cache is overwritten from position 0)."""
        self.n_past = 0

    def eval(self, tokens: Sequence[int] | np.ndarray, logits_all: bool = False) -> np.ndarray:
        """Append `tokens` to the context; logits of the last position `[n_vocab]` or of every new one."""
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("eval() needs a non-empty 1-D sequence of token ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        bad = ids[(ids < 0) | (ids >= self.n_vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary of {self.n_vocab}")
        if self.n_past + ids.size > self.n_ctx:
            raise ContextOverflowError(
                f"Requested tokens ({self.n_past + ids.size}) exceed context window of {self.n_ctx}")
        check = getattr(self.file, "check_unchanged", None)
        if check is not None:
            check()
        outs = []
        for s in range(0, ids.size, self.n_batch):
            chunk = ids[s:s + self.n_batch]
            last = s + self.n_batch >= ids.size
            h = self._forward(chunk)
            if logits_all:
                outs.append(self._head(h))
            elif last:
                outs.append(self._head(h[-1:])[0])
        out = np.concatenate(outs, axis=0) if logits_all else outs[0]
        if not np.isfinite(out).all():  # never hand NaN/inf on as if it were an answer
            raise NumericalError(f"the forward pass produced non-finite logits (weights in {getattr(self.file, 'path', 'the model file')} "
                                 "may be corrupt); call reset() before evaluating again")
        return out

    def _attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                   window: int | None = None) -> np.ndarray:
        """Causal GQA attention (optionally sliding-window): the backend's C kernel when it has one, else
        numpy. k/v hold positions 0..n_past+T-1 relative to their first row."""
        fast = getattr(self.backend, "attention", None)
        if fast is not None:
            return fast(q, k, v, n_past, scale, window=window)
        return causal_attention(q, k, v, n_past, scale, window=window)

    def _f16_if_ggml(self, x: np.ndarray) -> np.ndarray:
        """numerics="ggml": values rounded to fp16 where llama.cpp's default f16 KV cache rounds them (k and v
        as stored, q as converted for the f16 K product); otherwise x unchanged."""
        return x.astype(np.float16).astype(np.float32) if self.numerics == "ggml" else x

    def _head(self, h: np.ndarray) -> np.ndarray:
        return self.backend.matmul(self.output, prepare_normed(self.backend, h, self.out_norm, self.hparams.rms_eps,
                                                               self.output.type))

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        """Run the new tokens `ids` through the blocks; hidden states [T, n_embd]; advances n_past."""
        raise NotImplementedError


class LlamaModel(DecoderModel):
    """A decoder-only transformer of the LLaMA shape with a float32 KV cache."""

    rope_mode = "norm"  # llama GGUF files: q/k are stored permuted for adjacent-pair rotation

    def __init__(self, file: Any, backend: Any, n_ctx: int | None = None, n_batch: int = 512) -> None:
        self.file = file
        self.backend = backend
        md = file.metadata
        self.hparams = hp = HParams.from_metadata(md, self._vocab_size(file))
        self._init_context(n_ctx, n_batch)
        self._load_tensors()
        freqs = file.tensors.get("rope_freqs.weight")
        self.rope = Rope(hp.n_rot, hp.rope_base, self.rope_mode, _vector(freqs) if freqs is not None else None)
        self.kq_mult = self._rope_scaling(file.metadata)
        kv_shape = (hp.n_layer, self.n_ctx, hp.n_head_kv, hp.head_dim)
        self.k_cache = np.zeros(kv_shape, np.float32)
        self.v_cache = np.zeros(kv_shape, np.float32)
        self.n_past = 0

    def _rope_scaling(self, md: Any) -> float:
        """Apply `{arch}.rope.scaling.*` (linear or yarn) to the rope; returns the factor on the softmax scale."""
        hp = self.hparams
        p = f"{hp.arch}.rope.scaling."
        kind = str(md.get(p + "type", "none") or "none")
        try:
            factor = float(md.get(p + "factor", 0.0) or 0.0)
        except (TypeError, ValueError):
            raise GGUFError(f"metadata {p}factor must be a number, got {md.get(p + 'factor')!r}") from None
        if kind == "none" or (kind == "linear" and factor in (0.0, 1.0)):
            return 1.0
        if kind == "linear":  # positions divided by the factor
            if not factor > 0:
                raise GGUFError(f"metadata {p}factor must be > 0, got {factor}")
            self.rope.inv_freq = self.rope.inv_freq / factor
            return 1.0
        if kind == "yarn":
            from .yarn import YarnParams, yarn_inv_freq

            y = YarnParams.from_metadata(md, hp.arch)
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
        self.out_norm = _vector(self._tensor("output_norm.weight", (d,)))
        self.output = self._linear("output.weight", d, hp.n_vocab, optional=True) or self._linear(
            "token_embd.weight", d, hp.n_vocab)  # tied embeddings
        self.layers: list[_Layer] = []
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            L = _Layer()
            L.attn_norm = _vector(self._tensor(p + "attn_norm.weight", (d,)))
            L.wq = self._linear(p + "attn_q.weight", d, q_dim)
            L.wk = self._linear(p + "attn_k.weight", d, kv_dim)
            L.wv = self._linear(p + "attn_v.weight", d, kv_dim)
            L.wo = self._linear(p + "attn_output.weight", q_dim, d)
            for b, dim in (("bq", q_dim), ("bk", kv_dim), ("bv", kv_dim)):
                t = self._tensor(p + f"attn_{b[1]}.bias", (dim,), optional=True)
                setattr(L, b, _vector(t) if t is not None else None)
            L.ffn_norm = _vector(self._tensor(p + "ffn_norm.weight", (d,)))
            L.w_gate = self._linear(p + "ffn_gate.weight", d, hp.n_ff)
            L.w_up = self._linear(p + "ffn_up.weight", d, hp.n_ff)
            L.w_down = self._linear(p + "ffn_down.weight", hp.n_ff, d)
            self.layers.append(L)

    def _layer_plans(self) -> list | None:
        """Per-layer plans for the backend's one-call decode step (KernelBackend.plan_layer), made once; None when
        the backend has none, a layer cannot take it, or numerics="ggml" (whose fp16 K/V rounding it lacks)."""
        hp, be = self.hparams, self.backend
        cached = getattr(self, "_plans_cache", None)
        if cached is not None and cached[0] is be and cached[1] == self.numerics:
            return cached[2]
        make = getattr(be, "plan_layer", None)
        out = None
        if make is not None and self.numerics == "default":
            out = []
            for li, L in enumerate(self.layers):
                p = make(L, hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim, self.rope.n_rot, hp.n_ff,
                         self.rope.mode == "neox", hp.rms_eps, self.k_cache[li], self.v_cache[li])
                if p is None:
                    out = None
                    break
                out.append(p)
        self._plans_cache = (be, self.numerics, out)
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
            xp = prepare_normed(be, h, L.attn_norm, hp.rms_eps, L.wq.type)  # normed and quantized once, for q, k, v
            q, k, v = matmul_many(be, [L.wq, L.wk, L.wv], xp)
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
            xp = prepare_normed(be, h, L.ffn_norm, hp.rms_eps, L.w_gate.type)  # shared by gate and up
            g, u = matmul_many(be, [L.w_gate, L.w_up], xp)
            h = h + be.matmul(L.w_down, prepare_swiglu(be, g, u, L.w_down.type))
        self.n_past = p0 + T
        return h


class Qwen2Model(LlamaModel):
    """qwen2: the LLaMA block with q/k/v biases (loaded when present) and NEOX-style rope."""

    rope_mode = "neox"
