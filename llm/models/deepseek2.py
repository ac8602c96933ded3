"""deepseek2 (DeepSeek-V2, V2-Lite, V2.5, V3, R1): multi-head latent attention (MLA) and a DeepSeek MoE FFN.

Attention. Keys and values come from a per-token latent c = norm(W_kv_a x)[:kv_lora] plus one shared rope key
k_pe = rope(W_kv_a x)[kv_lora:]. Queries are per head [q_nope | q_pe] (optionally through a low-rank q_a/q_b
pair). Two GGUF layouts:

* new ("MLA as MQA", files with `attention.key_length_mla`): `attn_k_b` [H, kv_lora, nope] and `attn_v_b`
  [H, v_head, kv_lora]. We use the absorbed form: q_nope_h . (K_h c) = (K_h^T q_nope_h) . c, so each head's query
  becomes a kv_lora-dim vector and attends directly over the cached latents; the per-head result (still in latent
  space) goes through v_b. **Cache: the latent plus k_pe, kv_lora + n_rot floats per position and layer** — for
  V3 576 floats instead of 128 heads x (192 + 128) = 40960 expanded — and nothing is ever decompressed.
* old (`attn_kv_b` [H*(nope + v_head), kv_lora], head_count_kv = head_count): the k_nope half would have to be
  transposed to absorb it, which a quantized weight cannot do without a requantization, so we decompress each new
  position once through kv_b and **cache the expanded per-head K and V** (the memory cost of plain MHA).

RoPE rotates interleaved pairs (llama.cpp's NORM mode) of the n_rot rope dims only; YaRN (llm/yarn.py) when the
file asks for it. FFN: `leading_dense_block_count` dense SwiGLU blocks, then MoE blocks (llm/moe.py) with shared
experts. Every matrix product goes through `backend.matmul`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, overload

import numpy as np

from tilellm.backend import Backend, LayerProgram, MoESpec
from tilellm.backend.ops import causal_attention, rms_norm
from tilellm.quant import TensorView
from tilellm.quant.errors import GGUFError, UnsupportedError
from tilellm.quant.kv import kv_check_dims, kv_load, kv_nbytes

from ..gguf.hparams import arch_of, check_block_count, check_vocab, dim, rope_base
from ..gguf.metadata import bool_of, float_in, nonneg_int
from .base import BatchedDecoder, DecoderModel, Segment, SlotCache, vector
from .kvshift import RopedKeys
from .layers import Rope, softmax
from .memory import check_kv_cache
from .moe import GATING_SIGMOID, GATING_SOFTMAX, RouterConfig, moe_ffn, route, swiglu
from .yarn import YarnParams, yarn_inv_freq, yarn_mscale


@dataclass(frozen=True)
class DeepSeek2HParams:
    """Sizes and constants of a deepseek2 file (MLA and MoE included)."""

    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int  # dense blocks
    n_head: int
    rms_eps: float
    rope_base: float
    n_rot: int  # qk_rope_head_dim
    qk_nope: int
    v_head: int
    kv_lora: int
    q_lora: int | None  # None: plain attn_q (V2-Lite)
    absorbed: bool  # True: attn_k_b / attn_v_b layout; False: attn_kv_b
    n_dense_lead: int
    n_expert: int
    n_ff_exp: int
    n_expert_shared: int
    router: RouterConfig | None  # None when every block is dense
    yarn: YarnParams | None

    @classmethod
    def from_file(cls, md: Mapping[str, Any], tensors: Mapping[str, TensorView], n_vocab: int) -> "DeepSeek2HParams":
        arch = arch_of(md)
        p = f"{arch}."
        n_head = dim(md, p + "attention.head_count")
        n_head_kv = dim(md, p + "attention.head_count_kv", n_head)
        kv_lora = dim(md, p + "attention.kv_lora_rank")
        n_rot = dim(md, p + "rope.dimension_count")
        if n_rot % 2:
            raise GGUFError(f"rope.dimension_count {n_rot} must be even")
        key_len = dim(md, p + "attention.key_length")
        val_len = dim(md, p + "attention.value_length")
        q_lora = dim(md, p + "attention.q_lora_rank") if p + "attention.q_lora_rank" in md else None
        has_kb = "blk.0.attn_k_b.weight" in tensors and "blk.0.attn_v_b.weight" in tensors
        has_kvb = "blk.0.attn_kv_b.weight" in tensors
        if p + "attention.key_length_mla" in md or p + "attention.value_length_mla" in md:
            # new layout: the attention llama.cpp builds is MQA over [latent | k_pe]
            k_mla = dim(md, p + "attention.key_length_mla")
            v_head = dim(md, p + "attention.value_length_mla")
            if n_head_kv != 1 or key_len != kv_lora + n_rot or val_len != kv_lora:
                raise GGUFError(
                    f"MLA layout needs head_count_kv 1, key_length = kv_lora_rank + rope ({kv_lora + n_rot}) and "
                    f"value_length = kv_lora_rank ({kv_lora}); got {n_head_kv}, {key_len}, {val_len}")
            if not has_kb:
                raise GGUFError("file has key_length_mla but no attn_k_b / attn_v_b tensors")
            absorbed, qk_nope = True, k_mla - n_rot
        else:
            if has_kb and not has_kvb:
                raise GGUFError("file has attn_k_b / attn_v_b but no key_length_mla / value_length_mla metadata")
            if not has_kvb:
                raise UnsupportedError("deepseek2 file has neither attn_kv_b nor attn_k_b/attn_v_b: unknown MLA layout")
            if n_head_kv != n_head:
                raise GGUFError(f"attn_kv_b layout needs head_count_kv == head_count, got {n_head_kv} != {n_head}")
            absorbed, qk_nope, v_head = False, key_len - n_rot, val_len
        if qk_nope < 1:
            raise GGUFError(f"key length {qk_nope + n_rot} leaves no non-rope part beside {n_rot} rope dims")
        n_layer = dim(md, p + "block_count")
        n_dense = nonneg_int(md, p + "leading_dense_block_count", 0)
        if n_dense > n_layer:
            raise GGUFError(f"leading_dense_block_count {n_dense} > block_count {n_layer}")
        router, n_expert, n_ff_exp, n_shared = None, 0, 0, 0
        if n_dense < n_layer:
            n_expert = dim(md, p + "expert_count")
            n_ff_exp = dim(md, p + "expert_feed_forward_length")
            n_shared = nonneg_int(md, p + "expert_shared_count", 0)
            # absent gating func = softmax, as for the first DeepSeek-V2 / V2.5 files
            gating = nonneg_int(md, p + "expert_gating_func", GATING_SOFTMAX)
            if gating not in (GATING_SOFTMAX, GATING_SIGMOID):
                raise UnsupportedError(f"expert_gating_func {gating} is not supported (1 softmax, 2 sigmoid)")
            try:
                router = RouterConfig(
                    n_expert=n_expert, n_used=dim(md, p + "expert_used_count"), gating=gating,
                    n_group=nonneg_int(md, p + "expert_group_count", 1) or 1,
                    n_group_used=nonneg_int(md, p + "expert_group_used_count", 1) or 1,
                    norm=bool_of(md, p + "expert_weights_norm", False),
                    scale=float_in(md, p + "expert_weights_scale", 1.0, low=0.0))
            except ValueError as e:
                raise GGUFError(f"invalid MoE metadata: {e}") from None
        eps = float_in(md, p + "attention.layer_norm_rms_epsilon", 1e-6, low=0.0, high=1.0, low_open=True)
        base = rope_base(md, p + "rope.freq_base")
        check_vocab(md, n_vocab)
        return cls(
            arch=arch, n_vocab=n_vocab, n_ctx_train=dim(md, p + "context_length", 4096),
            n_embd=dim(md, p + "embedding_length"), n_layer=n_layer,
            n_ff=dim(md, p + "feed_forward_length") if n_dense else 0, n_head=n_head, rms_eps=eps,
            rope_base=base, n_rot=n_rot, qk_nope=qk_nope, v_head=v_head, kv_lora=kv_lora, q_lora=q_lora,
            absorbed=absorbed, n_dense_lead=n_dense, n_expert=n_expert, n_ff_exp=n_ff_exp,
            n_expert_shared=n_shared, router=router, yarn=YarnParams.from_metadata(md, arch))


def mqa_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                  chunk: int = 128) -> np.ndarray:
    """Causal attention of all heads over one shared key/value sequence (MLA's latent cache).

    q [T, H, D] for positions n_past..n_past+T-1, k [S, D], v [S, Dv] (S = n_past + T) -> [T, H, Dv]. With a single
    kv head every head's rows stack into one [rows*H, D] operand, so scores and output are two plain 2-D GEMMs.
    Queries go in chunks that only read the keys they can see, which skips most of the masked half of a prefill.
    """
    T, H, D = q.shape
    out = np.empty((T, H, v.shape[1]), np.float32)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        S = n_past + t1  # the last query of the chunk sees keys 0..S-1
        scores = (q[t0:t1].reshape(-1, D) @ k[:S].T).reshape(t1 - t0, H, S)
        scores *= np.float32(scale)
        if t1 - t0 > 1:  # token t (absolute n_past + t) sees keys 0..n_past+t
            future = np.arange(S)[None, :] > (n_past + np.arange(t0, t1))[:, None]
            scores += np.where(future, np.float32(-np.inf), np.float32(0))[:, None, :]
        p = softmax(scores, axis=-1)
        out[t0:t1] = (p.reshape(-1, S) @ v[:S]).reshape(t1 - t0, H, -1)
    return out


class _Block:
    """One deepseek2 block's tensors. A field the file's layout lacks is None (the hparams say which: q_lora,
    absorbed, dense or MoE); the code reads only the fields of its layout."""

    __slots__ = ("attn_norm", "wq", "wq_a", "q_a_norm", "wq_b", "wkv_a", "kv_a_norm", "wk_b", "wv_b", "wkv_b",
                 "wo", "ffn_norm", "w_gate", "w_up", "w_down", "router", "probs_bias", "gate_exps", "up_exps",
                 "down_exps", "gate_sh", "up_sh", "down_sh")
    attn_norm: np.ndarray
    wq: TensorView | None  # None: the low-rank q_a / q_b pair instead
    wq_a: TensorView
    q_a_norm: np.ndarray
    wq_b: TensorView
    wkv_a: TensorView
    kv_a_norm: np.ndarray
    wk_b: TensorView
    wv_b: TensorView
    wkv_b: TensorView
    wo: TensorView
    ffn_norm: np.ndarray
    w_gate: TensorView
    w_up: TensorView
    w_down: TensorView
    router: TensorView | None  # None: a dense block
    probs_bias: np.ndarray | None
    gate_exps: TensorView
    up_exps: TensorView
    down_exps: TensorView
    gate_sh: TensorView | None  # None: no shared experts
    up_sh: TensorView
    down_sh: TensorView

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)


class DeepSeek2Model(DecoderModel, BatchedDecoder):
    """deepseek2 decoder with an MLA KV cache (see the module docstring for which cache and why)."""

    def __init__(self, file: Any, backend: Backend, n_ctx: int | None = None, n_batch: int = 512,
                 numerics: str = "default", *, type_k: Any = "f16", type_v: Any = "f16") -> None:
        self._bind(file, backend, numerics, type_k, type_v)
        self.hparams = hp = DeepSeek2HParams.from_file(file.metadata, file.tensors, self._vocab_size(file))
        check_block_count(file.metadata, file.tensors, hp.n_layer)
        self._init_context(n_ctx, n_batch)
        self._load_tensors()
        self.rope = Rope(hp.n_rot, hp.rope_base, "norm")
        if hp.yarn is not None:
            self.rope.inv_freq = yarn_inv_freq(hp.n_rot, hp.rope_base, hp.yarn)
        self.kq_scale = yarn_mscale(hp.yarn) ** 2 / math.sqrt(hp.qk_nope + hp.n_rot)
        if not (math.isfinite(self.kq_scale) and self.kq_scale > 0):
            raise GGUFError(f"the rope.scaling.yarn_* metadata gives an attention scale of {self.kq_scale}")
        n_pos = hp.n_layer * self.n_ctx
        if hp.absorbed:  # one cache of [latent | k_pe] rows, of type_k (the values are its latent part)
            kv_check_dims(self.type_k, {"kv_lora_rank + rope dims": hp.kv_lora + hp.n_rot}, "type_k")
            need = kv_nbytes(n_pos * (hp.kv_lora + hp.n_rot), self.type_k)
        else:  # per-head keys [k_nope | k_pe] (stored in two parts by the one-call layer) and values
            kv_check_dims(self.type_k, {"qk_nope_head_dim": hp.qk_nope, "rope dims": hp.n_rot}, "type_k")
            kv_check_dims(self.type_v, {"v_head_dim": hp.v_head}, "type_v")
            need = (kv_nbytes(n_pos * hp.n_head * (hp.qk_nope + hp.n_rot), self.type_k)
                    + kv_nbytes(n_pos * hp.n_head * hp.v_head, self.type_v))
        check_kv_cache(need, self.n_ctx, hp.n_ctx_train)
        arrays = self._slot_arrays(1, self.n_ctx)
        if hp.absorbed:
            self.kv_cache = arrays["kv"][0]
        else:
            self.k_cache, self.v_cache = arrays["k"][0], arrays["v"][0]

    # ------------------------------------------------------------------ loading
    @overload
    def _weight(self, name: str, shape: tuple[int, ...], optional: Literal[False] = False) -> TensorView: ...

    @overload
    def _weight(self, name: str, shape: tuple[int, ...], optional: bool) -> TensorView | None: ...

    def _weight(self, name: str, shape: tuple[int, ...], optional: bool = False) -> TensorView | None:
        """A matrix (2-D or stacked 3-D) the backend must multiply with."""
        t = self._tensor(name, shape, optional)
        if t is not None and not self.backend.supports(t.type):
            raise UnsupportedError(f"tensor {name!r} has type {t.type.name}, which backend {self.backend.name!r} "
                                   f"does not support")
        return t

    def _load_tensors(self) -> None:
        hp = self.hparams
        d, H, nope, rot, lora = hp.n_embd, hp.n_head, hp.qk_nope, hp.n_rot, hp.kv_lora
        self._load_embeddings()
        self.blocks: list[_Block] = []
        for i in range(hp.n_layer):
            p = f"blk.{i}."
            B = _Block()
            B.attn_norm = vector(self._tensor(p + "attn_norm.weight", (d,)))
            if hp.q_lora is None:
                B.wq = self._weight(p + "attn_q.weight", (d, H * (nope + rot)))
            else:
                B.wq_a = self._weight(p + "attn_q_a.weight", (d, hp.q_lora))
                B.q_a_norm = vector(self._tensor(p + "attn_q_a_norm.weight", (hp.q_lora,)))
                B.wq_b = self._weight(p + "attn_q_b.weight", (hp.q_lora, H * (nope + rot)))
            B.wkv_a = self._weight(p + "attn_kv_a_mqa.weight", (d, lora + rot))
            B.kv_a_norm = vector(self._tensor(p + "attn_kv_a_norm.weight", (lora,)))
            if hp.absorbed:
                B.wk_b = self._weight(p + "attn_k_b.weight", (nope, lora, H))
                B.wv_b = self._weight(p + "attn_v_b.weight", (lora, hp.v_head, H))
            else:
                B.wkv_b = self._weight(p + "attn_kv_b.weight", (lora, H * (nope + hp.v_head)))
            B.wo = self._weight(p + "attn_output.weight", (H * hp.v_head, d))
            B.ffn_norm = vector(self._tensor(p + "ffn_norm.weight", (d,)))
            if i < hp.n_dense_lead:
                B.w_gate = self._weight(p + "ffn_gate.weight", (d, hp.n_ff))
                B.w_up = self._weight(p + "ffn_up.weight", (d, hp.n_ff))
                B.w_down = self._weight(p + "ffn_down.weight", (hp.n_ff, d))
            else:
                E, f = hp.n_expert, hp.n_ff_exp
                B.router = self._weight(p + "ffn_gate_inp.weight", (d, E))
                b = self._tensor(p + "exp_probs_b.bias", (E,), optional=True)
                B.probs_bias = vector(b) if b is not None else None
                B.gate_exps = self._weight(p + "ffn_gate_exps.weight", (d, f, E))
                B.up_exps = self._weight(p + "ffn_up_exps.weight", (d, f, E))
                B.down_exps = self._weight(p + "ffn_down_exps.weight", (f, d, E))
                fs = f * hp.n_expert_shared
                if fs:
                    B.gate_sh = self._weight(p + "ffn_gate_shexp.weight", (d, fs))
                    B.up_sh = self._weight(p + "ffn_up_shexp.weight", (d, fs))
                    B.down_sh = self._weight(p + "ffn_down_shexp.weight", (fs, d))
                else:
                    B.gate_sh = None
            self.blocks.append(B)

    # ------------------------------------------------------------------ running
    def _mla(self, li: int, B: _Block, x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
             spans: list[tuple[Any, int, int, int]] | None = None) -> np.ndarray:
        """MLA for the T new tokens of x (normed hidden states); output [T, n_embd]. `spans`: the sequences
        among the rows, `(layer cache, first position, r0, r1)` each (default: this model's one sequence)."""
        hp, be = self.hparams, self.backend
        T = x.shape[0]
        H, nope, lora = hp.n_head, hp.qk_nope, hp.kv_lora
        if spans is None:
            lc = self.kv_cache[li] if hp.absorbed else (self.k_cache[li], self.v_cache[li])
            spans = [(lc, self.n_past, 0, T)]
        xp = be.prepare(x, (B.wq if B.wq is not None else B.wq_a).type)  # shared by the q and kv_a projections
        if B.wq is not None:  # no q_lora: one q projection
            q = be.matmul(B.wq, xp)
        else:
            q = be.matmul(B.wq_b, rms_norm(be.matmul(B.wq_a, xp), B.q_a_norm, hp.rms_eps))
        q = q.reshape(T, H, nope + hp.n_rot)
        self.rope.apply(q[..., nope:], cos, sin)  # in place on the q_pe part of each head
        kv = be.matmul(B.wkv_a, xp)  # [T, kv_lora + n_rot]
        latent = rms_norm(kv[:, :lora], B.kv_a_norm, hp.rms_eps)
        k_pe = self.rope.apply(np.ascontiguousarray(kv[:, None, lora:]), cos, sin)[:, 0]  # one key shared by heads
        if hp.absorbed:
            # absorb k_b into the query: head h's query in latent space is K_h^T q_nope_h
            qa = np.empty((T, H, lora + hp.n_rot), np.float32)
            for h in range(H):
                qa[:, h, :lora] = be.matmul(B.wk_b.matrix(h), np.ascontiguousarray(q[:, h, :nope]))
            qa[:, :, lora:] = q[:, :, nope:]
            ctx = np.empty((T, H, lora), np.float32)
            for cache, p0, r0, r1 in spans:  # each sequence over its own cache, with the same code
                S = p0 + r1 - r0
                self._kv_put(cache[p0:S], np.concatenate([latent[r0:r1], k_pe[r0:r1]], axis=1))
                kv = kv_load(cache[:S])
                ctx[r0:r1] = mqa_attention(qa[r0:r1], kv, kv[:, :lora], p0, self.kq_scale)  # [n, H, lora]
            o = np.empty((T, H * hp.v_head), np.float32)
            for h in range(H):
                o[:, h * hp.v_head:(h + 1) * hp.v_head] = be.matmul(B.wv_b.matrix(h), np.ascontiguousarray(ctx[:, h]))
        else:
            kvb = be.matmul(B.wkv_b, latent).reshape(T, H, nope + hp.v_head)
            o = np.empty((T, H * hp.v_head), np.float32)
            for (kc, vc), p0, r0, r1 in spans:
                S = p0 + r1 - r0
                kn = np.empty((r1 - r0, H, nope + hp.n_rot), np.float32)
                kn[:, :, :nope] = kvb[r0:r1, :, :nope]
                kn[:, :, nope:] = k_pe[r0:r1, None, :]
                self._kv_put(kc[p0:S], kn)
                self._kv_put(vc[p0:S], kvb[r0:r1, :, nope:])
                o[r0:r1] = causal_attention(q[r0:r1], kc[:S], vc[:S], p0, self.kq_scale).reshape(r1 - r0, -1)
        return be.matmul(B.wo, o)

    def _ffn(self, B: _Block, x: np.ndarray) -> np.ndarray:
        be = self.backend
        if B.router is None:
            return swiglu(be, x, B.w_gate, B.w_up, B.w_down)
        ids, w = route(be.matmul(B.router, x), self.hparams.router, B.probs_bias)
        y = moe_ffn(be, x, ids, w, B.gate_exps, B.up_exps, B.down_exps)
        if B.gate_sh is not None:
            y += swiglu(be, x, B.gate_sh, B.up_sh, B.down_sh)
        return y

    def _cache_arrays(self) -> dict[str, np.ndarray]:
        if self.hparams.absorbed:
            return {"kv": self.kv_cache}
        return {"k": self.k_cache, "v": self.v_cache}

    def _roped_keys(self) -> list[RopedKeys]:
        """k_pe: after the latent in the MLA cache row, after each head's k_nope in the expanded keys."""
        hp = self.hparams
        layers = tuple(range(hp.n_layer))
        if hp.absorbed:
            return [RopedKeys("kv", layers, hp.kv_lora, self.rope)]
        return [RopedKeys("k", layers, hp.qk_nope, self.rope)]

    def _layer_program(self, li: int, caches: dict[str, np.ndarray]) -> LayerProgram:
        """The deepseek2 block as a layer program: MLA (as `_mla` computes it) and the dense or MoE FFN."""
        hp, B = self.hparams, self.blocks[li]
        E, H, nope, rot, lora, vh, eps = hp.n_embd, hp.n_head, hp.qk_nope, hp.n_rot, hp.kv_lora, hp.v_head, hp.rms_eps
        qh = nope + rot  # a query head: [q_nope | q_pe]
        P = LayerProgram(E, rot)
        x = P.buffer(E)
        P.rms_norm(x, P.H, B.attn_norm, eps, E)
        if B.wq is None:  # low-rank q: q_a (normed), then q_b; kv_a from the same prepared x
            qa, kv, q = P.buffer(hp.q_lora), P.buffer(lora + rot), P.buffer(H * qh)
            P.matmul([B.wq_a, B.wkv_a], x, qa, E)
            P.rms_norm(qa, qa, B.q_a_norm, eps, hp.q_lora)
            P.matmul([B.wq_b], qa, q, hp.q_lora)
        else:
            q, kv = P.buffer(H * qh), P.buffer(lora + rot)
            P.matmul([B.wq, B.wkv_a], x, q, E)
        P.rope(q + nope, H, qh, neox=False)
        P.rms_norm(kv, kv, B.kv_a_norm, eps, lora)  # the latent
        P.rope(kv + lora, 1, 0, neox=False)  # the one rope key all heads share
        o = P.buffer(H * vh)
        if hp.absorbed:
            # each head's query in latent space (K_h^T q_nope_h | q_pe_h) attends over the cached [latent | k_pe];
            # the values are the latents: attention over the whole cached row, of which the first kv_lora are kept
            dk = lora + rot
            qa_, ctx = P.buffer(H * dk), P.buffer(H * dk)
            P.matmul_heads(B.wk_b, H, q, qh, nope, qa_, dk)
            P.copy(qa_ + lora, q + nope, rot, rows=H, ld_dst=dk, ld_src=qh)
            c = P.cache(caches["kv"])
            P.store(c, kv, dk)
            P.attention(qa_, ctx, c, c, H, 1, dk, dk, self.kq_scale)
            P.matmul_heads(B.wv_b, H, ctx, dk, lora, o, vh)
        else:  # decompress the new position into per-head keys and values
            kvb = P.buffer(H * (nope + vh))
            P.matmul([B.wkv_b], kv, kvb, lora)
            kc, vc = P.cache(caches["k"]), P.cache(caches["v"])
            P.store(kc, kvb, nope, rows=H, ld_src=nope + vh, c_ld=qh)
            P.store(kc, kv + lora, rot, rows=H, ld_src=0, c_off=nope, c_ld=qh)
            P.store(vc, kvb + nope, vh, rows=H, ld_src=nope + vh, c_ld=vh)
            P.attention(q, o, kc, vc, H, H, qh, vh, self.kq_scale)
        out = P.buffer(E)
        P.matmul([B.wo], o, out, H * vh)
        P.add(P.H, E, src=out)
        x2, y = P.buffer(E), P.buffer(E)
        P.rms_norm(x2, P.H, B.ffn_norm, eps, E)
        if B.router is None:
            gu = P.buffer(2 * hp.n_ff)
            P.matmul([B.w_gate, B.w_up], x2, gu, E)
            P.matmul([B.w_down], gu, y, hp.n_ff, pre="swiglu", src2=gu + hp.n_ff)
        else:
            r = hp.router
            assert r is not None  # MoE blocks exist only with a router config
            P.moe(x2, y, E, MoESpec(B.router, B.probs_bias, r.n_used, r.gating, r.n_group, r.n_group_used, r.norm,
                                    r.scale, B.gate_exps, B.up_exps, B.down_exps))
            if B.gate_sh is not None:
                fs = hp.n_ff_exp * hp.n_expert_shared
                gus, y2 = P.buffer(2 * fs), P.buffer(E)
                P.matmul([B.gate_sh, B.up_sh], x2, gus, E)
                P.matmul([B.down_sh], gus, y2, fs, pre="swiglu", src2=gus + fs)
                P.add(y, E, src=y2)
        P.add(P.H, E, src=y)
        return P

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        hp = self.hparams
        T, p0 = ids.size, self.n_past
        h = self.tok_embd.rows(ids)
        plans = self._layer_plans() if T == 1 else None
        if plans is not None:  # one token: each layer in one backend call
            h = self._decode_planned(plans, h, np.array([p0]))
            self.n_past = p0 + 1
            return h
        cos, sin = self.rope.tables(np.arange(p0, p0 + T))
        for li, B in enumerate(self.blocks):
            h = h + self._mla(li, B, rms_norm(h, B.attn_norm, hp.rms_eps), cos, sin)
            h = h + self._ffn(B, rms_norm(h, B.ffn_norm, hp.rms_eps))
        self.n_past = p0 + T
        return h

    # ------------------------------------------------------------------ several sequences (BatchedDecoder)
    def _slot_arrays(self, n_slots: int, n_ctx: int) -> dict[str, np.ndarray]:
        hp = self.hparams
        if hp.absorbed:  # the compressed latent and the rope key per position
            return {"kv": self._kv_zeros((n_slots, hp.n_layer, n_ctx, hp.kv_lora + hp.n_rot), "k")}
        return {"k": self._kv_zeros((n_slots, hp.n_layer, n_ctx, hp.n_head, hp.qk_nope + hp.n_rot), "k"),
                "v": self._kv_zeros((n_slots, hp.n_layer, n_ctx, hp.n_head, hp.v_head), "v")}

    def _forward_rows(self, cache: SlotCache, ids: np.ndarray, pos: np.ndarray, segs: list[Segment],
                      groups: list[slice]) -> np.ndarray:
        """`_forward` over the rows of several sequences, one row group at a time through every block (the
        groups are the GEMM boundaries; within one, the experts' rows are gathered across its sequences)."""
        hp = self.hparams
        h = np.array(self.tok_embd.rows(ids), dtype=np.float32)  # written group by group
        cos, sin = self.rope.tables(pos)
        a = cache.arrays
        for g in groups:
            gsegs = [s for s in segs if g.start <= s.r0 < g.stop]
            hg, cg, sg = h[g], cos[g], sin[g]
            for li, B in enumerate(self.blocks):
                spans = [((a["kv"][s.slot, li] if hp.absorbed else (a["k"][s.slot, li], a["v"][s.slot, li])),
                          s.p0, s.r0 - g.start, s.r1 - g.start) for s in gsegs]
                hg = hg + self._mla(li, B, rms_norm(hg, B.attn_norm, hp.rms_eps), cg, sg, spans)
                hg = hg + self._ffn(B, rms_norm(hg, B.ffn_norm, hp.rms_eps))
            h[g] = hg
        return h
