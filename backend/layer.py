"""A typed description of one decoder layer, for backends that run a whole layer in one call (`plan_layer`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilellm.quant import TensorView


@dataclass(frozen=True)
class LayerShape:
    """The sizes and constants of a pre-norm attention + SwiGLU decoder layer."""

    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int  # rope dims per head (the first n_rot of head_dim)
    n_ff: int
    rope_neox: bool  # rotate (i, i + n_rot/2) pairs (qwen2); False: adjacent pairs (llama)
    eps: float  # RMSNorm epsilon


@dataclass(frozen=True)
class DecoderLayerSpec:
    """One LLaMA-shaped layer (llama, qwen2): h += o(attn(rope(q), rope(k), v)) over RMSNorm(h, attn_norm), then
    h += down(silu(gate x) * up x) over x = RMSNorm(h, ffn_norm). Norms and biases are float32 vectors."""

    shape: LayerShape
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
