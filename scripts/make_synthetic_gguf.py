#!/usr/bin/env python3
"""Write a synthetic LLaMA GGUF with random weights (for benchmarks and tests).

The file carries everything llama.cpp needs to load an ``llama`` model: the hyper-parameters,
a SentencePiece-style ("llama") vocabulary of the requested size with scores and token types
(``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, byte-fallback pieces ``<0x00>``..``<0xFF>`` 3..258, then
ordinary pieces), and every tensor of the LLaMA graph. Every 2-D matrix is stored in the chosen
type; the RMSNorm weights stay F32 (as llama.cpp's quantizer keeps them). The quantization is
``tilellm.quant.quantize``: ggml's reference rounding for q8_0 … q5_1, tilellm's own quantizers for
q2_k, q3_k, iq4_nl and iq4_xs (valid blocks of those types, not what llama-quantize would choose).

Defaults give the TinyLlama-1.1B shape with 4 layers (about 307 M parameters)::

    python scripts/make_synthetic_gguf.py --type q4_0 -o tinyllama-4l-q4_0.gguf
    python scripts/make_synthetic_gguf.py --hidden 64 --ffn 128 --heads 4 --kv-heads 2 \\
        --vocab 512 --layers 2 --ctx 256 --type q8_0 -o tiny.gguf

Weights are N(0, 1/sqrt(fan_in)) (embeddings N(0, 1), norms 1 + N(0, 0.05)), so activations
and logits stay of order one through the layers.
"""
from __future__ import annotations

import argparse
import itertools
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    import gguf

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_1", "iq4_nl", "iq4_xs", "q2_k", "q3_k")

# general.file_type values (llama.cpp's llama_ftype numbering)
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "bf16": 32, "q5_1": 9, "q2_k": 10, "q3_k": 11,
              "iq4_nl": 25, "iq4_xs": 30}

# SentencePiece token types as stored in GGUF
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
_SPACE = "\u2581"  # SentencePiece's visible space


def _ordinary_pieces() -> Iterator[str]:
    """Pieces in merge-reachable order: single characters, then longer strings built from them.

    Each longer piece is the concatenation of two pieces yielded earlier, so a
    SentencePiece/BPE-style tokenizer can actually produce it.
    """
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    yield _SPACE
    yield from chars
    letters = string.ascii_lowercase
    for c in letters + string.ascii_uppercase:
        yield _SPACE + c
    for a, b in itertools.product(letters, repeat=2):
        yield a + b
    for a, b in itertools.product(letters, repeat=2):
        yield _SPACE + a + b
    for n in range(3, 8):  # "▁" + n letters = ("▁" + n-1 letters) + letter
        for combo in itertools.product(letters, repeat=n):
            yield _SPACE + "".join(combo)


def build_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary of exactly ``n_vocab`` pieces with scores and types."""
    if n_vocab < 3 + 256 + 1:
        raise ValueError(f"--vocab must be at least 260 (3 specials + 256 byte pieces + 1), got {n_vocab}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [_UNKNOWN, _CONTROL, _CONTROL] + [_BYTE] * 256
    scores = [0.0] * len(tokens)
    for i, piece in enumerate(itertools.islice(_ordinary_pieces(), n_vocab - len(tokens))):
        tokens.append(piece)
        types.append(_NORMAL)
        # SPM merge priority: earlier (shorter, "more frequent") pieces score higher
        scores.append(-float(i))
    return tokens, scores, types


def _matrix(rng: np.random.Generator, rows: int, k: int, gain: float = 1.0) -> np.ndarray:
    """Random float32 [rows, k] with std gain/sqrt(k) (fan-in scaling keeps activations ~1)."""
    w = rng.standard_normal((rows, k), dtype=np.float32)
    w *= np.float32(gain / np.sqrt(k))
    return w


def add_llama_vocab(w: gguf.GGUFWriter, n_vocab: int, space_prefix: bool | None = True) -> None:
    """`build_vocab(n_vocab)` written as a SentencePiece ("llama") tokenizer: <unk> 0, <s> 1, </s> 2, BOS added,
    `add_space_prefix` as given (None: the key left out)."""
    tokens, scores, types = build_vocab(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if space_prefix is not None:
        w.add_add_space_prefix(space_prefix)


def write_synthetic_gguf(
    path: str | Path,
    *,
    hidden: int = 2048,
    ffn: int = 5632,
    heads: int = 32,
    kv_heads: int = 4,
    vocab: int = 32000,
    layers: int = 4,
    ctx: int = 2048,
    wtype: str = "q4_0",
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """Write the GGUF and return its path. Raises ValueError for inconsistent shapes."""
    import gguf

    from tilellm.quant import TYPE_INFO, quantize, type_from_any

    wtype = wtype.lower()
    if wtype not in WEIGHT_TYPES:
        raise ValueError(f"--type must be one of {', '.join(WEIGHT_TYPES)}, got {wtype!r}")
    for label, v in (("hidden", hidden), ("ffn", ffn), ("heads", heads), ("kv-heads", kv_heads),
                     ("layers", layers), ("ctx", ctx)):
        if v < 1:
            raise ValueError(f"--{label} must be >= 1, got {v}")
    if hidden % heads:
        raise ValueError(f"--hidden {hidden} is not a multiple of --heads {heads}")
    if heads % kv_heads:
        raise ValueError(f"--heads {heads} is not a multiple of --kv-heads {kv_heads}")
    head_dim = hidden // heads
    if head_dim % 2:
        raise ValueError(f"head dimension {head_dim} must be even for RoPE")
    gt = type_from_any(wtype)
    block = TYPE_INFO[gt].block_size
    # quantized rows must hold whole blocks: both row lengths (hidden for most, ffn for ffn_down)
    for label, k in (("hidden", hidden), ("ffn", ffn)):
        if k % block:
            raise ValueError(f"--{label} {k} must be a multiple of {block} for {wtype}")
    rng = np.random.default_rng(seed)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name or f"synthetic-llama-{hidden}h-{layers}l-{wtype}")
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    w.add_file_type(_FILE_TYPE[wtype])
    if wtype not in ("f32", "f16", "bf16"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_llama_vocab(w, vocab)

    qtype = gguf.GGMLQuantizationType(int(gt))

    def add_matrix(tname: str, m: np.ndarray) -> None:
        if wtype == "f32":
            w.add_tensor(tname, m)
        else:
            # uint8 [rows, row_bytes]; gguf derives the logical shape from the byte shape
            w.add_tensor(tname, quantize(m, gt), raw_dtype=qtype)

    def add_norm(tname: str) -> None:
        w.add_tensor(tname, (1.0 + 0.05 * rng.standard_normal(hidden)).astype(np.float32))

    add_matrix("token_embd.weight", rng.standard_normal((vocab, hidden), dtype=np.float32))
    kv_dim = kv_heads * head_dim
    for i in range(layers):
        p = f"blk.{i}."
        add_norm(p + "attn_norm.weight")
        add_matrix(p + "attn_q.weight", _matrix(rng, hidden, hidden, 1.5))
        add_matrix(p + "attn_k.weight", _matrix(rng, kv_dim, hidden, 1.5))
        add_matrix(p + "attn_v.weight", _matrix(rng, kv_dim, hidden))
        add_matrix(p + "attn_output.weight", _matrix(rng, hidden, hidden))
        add_norm(p + "ffn_norm.weight")
        add_matrix(p + "ffn_gate.weight", _matrix(rng, ffn, hidden))
        add_matrix(p + "ffn_up.weight", _matrix(rng, ffn, hidden))
        add_matrix(p + "ffn_down.weight", _matrix(rng, hidden, ffn))
    add_norm("output_norm.weight")
    add_matrix("output.weight", _matrix(rng, vocab, hidden, 2.0))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048, help="embedding length (default 2048)")
    ap.add_argument("--ffn", type=int, default=5632, help="feed-forward length (default 5632)")
    ap.add_argument("--heads", type=int, default=32, help="attention heads (default 32)")
    ap.add_argument("--kv-heads", type=int, default=4, help="key/value heads (default 4)")
    ap.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (default 4)")
    ap.add_argument("--ctx", type=int, default=2048, help="llama.context_length (default 2048)")
    ap.add_argument("--type", default="q4_0", choices=WEIGHT_TYPES, help="type of every 2-D matrix")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--name", default=None, help="general.name")
    ap.add_argument("-o", "--output", required=True, help="output .gguf path")
    a = ap.parse_args(argv)
    try:
        out = write_synthetic_gguf(a.output, hidden=a.hidden, ffn=a.ffn, heads=a.heads, kv_heads=a.kv_heads,
                                   vocab=a.vocab, layers=a.layers, ctx=a.ctx, wtype=a.type, seed=a.seed,
                                   name=a.name)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
