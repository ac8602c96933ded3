"""phi3 (Phi-3, Phi-3.5 mini, Phi-4 mini): the LLaMA block with fused projections and LongRoPE ("su") scaling.

- q, k and v are one tensor `attn_qkv` [n_embd, q + 2 kv] (rows: q, then k, then v) unless the file has them
  separately; gate and up are one tensor `ffn_up` [n_embd, 2 n_ff] (rows: gate, then up), FFN
  down(silu(gate) * up). Both are split into zero-copy row views, so every product still goes through the backend;
- NEOX rope over `rope.dimension_count` dims (Phi-4 mini rotates 3/4 of each head);
- LongRoPE: the file's `rope_factors_short` / `rope_factors_long` (n_rot / 2 each) divide the frequencies, the
  long ones when the context exceeds `rope.scaling.original_context_length` (llama.cpp's rule: by context size,
  not by sequence length), and the rotated dims of q and k are multiplied by `rope.scaling.attn_factor`;
- a `sliding_window` key is ignored, as llama.cpp does (its Phi-3 sliding window is disabled).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tilellm.quant import TensorView
from tilellm.quant.errors import GGUFError

from ..gguf.metadata import float_in, nonneg_int
from .base import vector
from .generic import DenseFFN, GenericModel


def row_view(t: TensorView, r0: int, r1: int, name: str) -> TensorView:
    """Rows r0..r1-1 of a 2-D weight as a zero-copy TensorView (a fused projection's part)."""
    return TensorView(name, (t.k, r1 - r0), t.type, t.data[r0:r1])


class Phi3Model(GenericModel):
    """Phi-3 family decoder over the op-by-op LLaMA-shaped block."""

    rope_mode = "neox"
    qk_norm = False

    def _qkv_of(self, i: int) -> tuple[TensorView, TensorView, TensorView]:
        hp, d, p = self.hparams, self.hparams.n_embd, f"blk.{i}."
        q_dim, kv_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        fused = self._linear(p + "attn_qkv.weight", d, q_dim + 2 * kv_dim, optional=True)
        if fused is None:
            return super()._qkv_of(i)
        return (row_view(fused, 0, q_dim, p + "attn_qkv.weight[q]"),
                row_view(fused, q_dim, q_dim + kv_dim, p + "attn_qkv.weight[k]"),
                row_view(fused, q_dim + kv_dim, q_dim + 2 * kv_dim, p + "attn_qkv.weight[v]"))

    def _ffn_of(self, i: int) -> DenseFFN:
        hp, d, p = self.hparams, self.hparams.n_embd, f"blk.{i}."
        up = self._linear(p + "ffn_up.weight", d, 2 * hp.n_ff)
        return DenseFFN(row_view(up, 0, hp.n_ff, p + "ffn_up.weight[gate]"),
                        row_view(up, hp.n_ff, 2 * hp.n_ff, p + "ffn_up.weight[up]"),
                        self._linear(p + "ffn_down.weight", hp.n_ff, d))

    def _rope_scaling(self, md: Any) -> float:
        """LongRoPE from the factor tensors (see the module docstring); other scaling keys as for llama."""
        hp = self.hparams
        short = self.file.tensors.get("rope_factors_short.weight")
        long = self.file.tensors.get("rope_factors_long.weight")
        if short is None and long is None:
            return super()._rope_scaling(md)
        p = f"{hp.arch}.rope.scaling."
        n_orig = nonneg_int(md, p + "original_context_length", hp.n_ctx_train) or hp.n_ctx_train
        t = long if (self.n_ctx > n_orig and long is not None) or short is None else short
        f = vector(t).astype(np.float64)
        if f.size != hp.n_rot // 2 or not (np.isfinite(f).all() and (f > 0).all()):
            raise GGUFError(f"tensor {t.name!r} must hold {hp.n_rot // 2} positive rope factors")
        self.rope.inv_freq = self.rope.inv_freq / f
        self.rope_mscale = float_in(md, p + "attn_factor", 1.0, low=0.0, low_open=True)
        return 1.0
