"""Model hyper-parameters read from GGUF metadata (keys prefixed by the architecture name)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tilellm.quant.errors import GGUFError

from .metadata import as_list, float_in, pos_int, str_of

# Integers beyond this are no real model's size; refusing them keeps later arithmetic (KV-cache bytes, loops over
# layers) away from absurd values. 2^31: what llama.cpp's int32 hyper-parameters can hold.
MAX_DIM = 2**31 - 1


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
        """Read and check every hyper-parameter (each failure a GGUFError naming the key). `n_vocab` is the
        embedding's row count; the tokenizer's vocabulary must match it."""
        arch = arch_of(md)
        p = f"{arch}."
        n_embd = dim(md, p + "embedding_length")
        n_head = dim(md, p + "attention.head_count")
        n_head_kv = dim(md, p + "attention.head_count_kv", n_head)
        if p + "attention.key_length" not in md and n_embd % n_head:
            raise GGUFError(f"metadata {p}embedding_length {n_embd} is not a multiple of "
                            f"{p}attention.head_count {n_head} (and no attention.key_length is given)")
        head_dim = dim(md, p + "attention.key_length", n_embd // n_head)
        v_dim = dim(md, p + "attention.value_length", head_dim)
        if v_dim != head_dim:
            raise GGUFError(f"key_length {head_dim} != value_length {v_dim} is not supported for {arch!r}")
        if n_head_kv > n_head or n_head % n_head_kv:
            raise GGUFError(f"metadata {p}attention.head_count {n_head} is not a multiple of "
                            f"{p}attention.head_count_kv {n_head_kv}")
        n_rot = dim(md, p + "rope.dimension_count", head_dim)
        if n_rot > head_dim or n_rot % 2:
            raise GGUFError(f"metadata {p}rope.dimension_count {n_rot} must be even and <= head size {head_dim}")
        if n_vocab is None:
            n_vocab = dim(md, p + "vocab_size") if "tokenizer.ggml.tokens" not in md else len(
                as_list(md["tokenizer.ggml.tokens"], "tokenizer.ggml.tokens"))
        check_vocab(md, int(n_vocab))
        eps = float_in(md, p + "attention.layer_norm_rms_epsilon", 1e-5, low=0.0, high=1.0, low_open=True)
        base = rope_base(md, p + "rope.freq_base")
        return cls(
            arch=arch, n_vocab=int(n_vocab), n_ctx_train=dim(md, p + "context_length", 2048), n_embd=n_embd,
            n_layer=dim(md, p + "block_count"), n_ff=dim(md, p + "feed_forward_length"), n_head=n_head,
            n_head_kv=n_head_kv, head_dim=head_dim, n_rot=n_rot, rope_base=base, rms_eps=eps,
        )


def arch_of(md: Mapping[str, Any]) -> str:
    """`general.architecture`, a non-empty string."""
    arch = str_of(md, "general.architecture")
    if not arch:
        raise GGUFError("metadata 'general.architecture' is empty")
    return arch


def dim(md: Mapping[str, Any], key: str, default: Any = ...) -> int:
    """A size hyper-parameter: an integer in [1, MAX_DIM]."""
    v = pos_int(md, key, default)
    if v > MAX_DIM:
        raise GGUFError(f"metadata {key!r} = {v} is larger than any model's ({MAX_DIM})")
    return v


def rope_base(md: Mapping[str, Any], key: str, default: float = 10000.0) -> float:
    """A rope frequency base: finite and > 1 (at 1 every pair turns alike and YaRN's ln(base) is 0)."""
    return float_in(md, key, default, low=1.0, low_open=True)


def check_block_count(md: Mapping[str, Any], tensors: Mapping[str, Any], n_layer: int) -> None:
    """`{arch}.block_count` must not exceed the blocks the file has tensors for (`blk.N.*`): checked before any
    per-layer structure is built, so a claim of 2^31 layers costs nothing."""
    top = -1
    for name in tensors:
        if name.startswith("blk."):
            idx = name[4:].split(".", 1)[0]
            if idx.isdigit():
                top = max(top, int(idx))
    if n_layer > top + 1:
        raise GGUFError(f"metadata '{arch_of(md)}.block_count' is {n_layer} but the file has tensors for "
                        f"{top + 1} blocks")


def check_vocab(md: Mapping[str, Any], n_rows: int) -> None:
    """The tokenizer's vocabulary (when the file has one) must have one token per embedding row, as llama.cpp
    requires: a shorter list leaves ids the tokenizer cannot decode, a longer one ids the model cannot embed."""
    toks = md.get("tokenizer.ggml.tokens")
    if toks is None:
        return
    n_tok = len(as_list(toks, "tokenizer.ggml.tokens"))
    if n_tok != n_rows:
        raise GGUFError(f"metadata 'tokenizer.ggml.tokens' has {n_tok} tokens but tensor 'token_embd.weight' "
                        f"has {n_rows} rows: the vocabulary and the embedding must match")
