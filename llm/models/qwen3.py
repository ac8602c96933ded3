"""qwen3: the qwen2 block without q/k/v biases and with per-head RMS norms of q and k before RoPE.

`blk.N.attn_q_norm.weight` / `attn_k_norm.weight` (length head_dim) norm every head's query and key with the
block's RMS epsilon, then NEOX rope; attention scale 1/sqrt(head_dim) (head_dim from `attention.key_length`, which
Qwen3 sets independently of n_embd / n_head). Run op by op (`generic.py`): the backend's one-call decode layer
has no q/k norms.
"""
from __future__ import annotations

from .generic import GenericModel


class Qwen3Model(GenericModel):
    """Qwen3 dense decoder (Qwen3 0.6B..32B)."""

    rope_mode = "neox"
    qk_norm = True
