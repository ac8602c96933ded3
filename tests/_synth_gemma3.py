"""A tiny random Gemma 3 GGUF (the tests' stand-in where the 270M demo model is too slow): local sliding-window
layers with their own rope base and a global layer, per-head q/k norms, and the synthetic SentencePiece vocabulary
of scripts/make_synthetic_gguf.py, so generate() runs on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import synthetic_module


def write_gemma3(path: Path, *, hidden: int = 64, heads: int = 2, kv_heads: int = 1, head_dim: int = 32,
                 ffn: int = 128, layers: int = 6, window: int = 8, vocab: int = 300, ctx: int = 512,
                 seed: int = 0) -> Path:
    """Layers i % 6 < 5 are local (window `window`, rope base 10000), the others global (rope base 1e6)."""
    import gguf

    synth = synthetic_module()
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "gemma3")
    a = "gemma3."
    for key, v in (("context_length", ctx), ("embedding_length", hidden), ("block_count", layers),
                   ("feed_forward_length", ffn), ("attention.head_count", heads),
                   ("attention.head_count_kv", kv_heads), ("attention.key_length", head_dim),
                   ("attention.value_length", head_dim), ("attention.sliding_window", window)):
        w.add_uint32(a + key, v)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(a + "rope.freq_base", 1e6)
    w.add_float32(a + "rope.local_freq_base", 10000.0)
    synth.add_llama_vocab(w, vocab, space_prefix=None)

    def mat(rows: int, k: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, k)) * (gain / np.sqrt(k))).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", (0.5 * rng.standard_normal((vocab, hidden))).astype(np.float32))
    qd, kvd = heads * head_dim, kv_heads * head_dim
    for i in range(layers):
        p = f"blk.{i}."
        for name, arr in (("attn_norm", norm(hidden)), ("attn_q", mat(qd, hidden, 1.5)),
                          ("attn_k", mat(kvd, hidden, 1.5)), ("attn_v", mat(kvd, hidden)),
                          ("attn_output", mat(hidden, qd)), ("attn_q_norm", norm(head_dim)),
                          ("attn_k_norm", norm(head_dim)), ("post_attention_norm", norm(hidden)),
                          ("ffn_norm", norm(hidden)), ("ffn_gate", mat(ffn, hidden)), ("ffn_up", mat(ffn, hidden)),
                          ("ffn_down", mat(hidden, ffn)), ("post_ffw_norm", norm(hidden))):
            w.add_tensor(p + name + ".weight", arr)
    w.add_tensor("output_norm.weight", norm(hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
