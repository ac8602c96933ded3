"""Model hyper-parameters read from GGUF metadata (keys prefixed by the architecture name)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tilellm.quant.errors import GGUFError

from .metadata import get, pos_int


@dataclass(frozen=True)
class HParams:
    """Sizes and constants of a decoder-only transformer."""

    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    rms_eps: float

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], n_vocab: int | None = None) -> "HParams":
        arch = get(md, "general.architecture")
        p = f"{arch}."
        n_embd = pos_int(md, p + "embedding_length")
        n_head = pos_int(md, p + "attention.head_count")
        n_head_kv = pos_int(md, p + "attention.head_count_kv", n_head)
        head_dim = pos_int(md, p + "attention.key_length", n_embd // n_head if n_embd % n_head == 0 else ...)
        v_dim = pos_int(md, p + "attention.value_length", head_dim)
        if v_dim != head_dim:
            raise GGUFError(f"key_length {head_dim} != value_length {v_dim} is not supported for {arch!r}")
        if n_head % n_head_kv:
            raise GGUFError(f"head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        n_rot = pos_int(md, p + "rope.dimension_count", head_dim)
        if n_rot > head_dim or n_rot % 2:
            raise GGUFError(f"rope.dimension_count {n_rot} must be even and <= head size {head_dim}")
        if n_vocab is None:
            toks = md.get("tokenizer.ggml.tokens")
            n_vocab = len(toks) if toks is not None else pos_int(md, p + "vocab_size")
        eps = float(get(md, p + "attention.layer_norm_rms_epsilon", 1e-5))
        base = float(get(md, p + "rope.freq_base", 10000.0))
        if not (eps > 0 and base > 0):
            raise GGUFError(f"invalid rms epsilon {eps} or rope base {base}")
        return cls(
            arch=arch, n_vocab=int(n_vocab), n_ctx_train=pos_int(md, p + "context_length", 2048), n_embd=n_embd,
            n_layer=pos_int(md, p + "block_count"), n_ff=pos_int(md, p + "feed_forward_length"), n_head=n_head,
            n_head_kv=n_head_kv, head_dim=head_dim, n_rot=n_rot, rope_base=base, rms_eps=eps,
        )
