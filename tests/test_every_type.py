"""A GGUF holding tensors of every ggml type the installed gguf.quants can dequantize loads and runs: on the
reference backend (which dequantizes every one of them), and on the default backend, whose kernels take the types
they have and hand the rest down to the reference backend.

The file is a small LLaMA whose 2-D matrices cycle through the types (the embedding and output matrices too).
Weights come from tilellm.quant.quantize where it quantizes the type, else from gguf.quants.quantize, else they
are random valid blocks (tests/_qblocks.py)."""
from __future__ import annotations

import numpy as np
import pytest
from _qblocks import valid_blocks
from conftest import synthetic_module
from gguf import GGMLQuantizationType
from gguf import quants as gq

import tilellm
from tilellm.quant import DEQUANTIZABLE, QUANTIZABLE, TYPE_INFO, GGMLType, quantize

T = GGMLType
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB, LAYERS = 256, 512, 4, 2, 300, 4


def gguf_types() -> list[GGMLType]:
    """F32, F16 and every type gguf.quants has a dequantizer for (as GGMLType)."""
    out = [T.F32, T.F16]
    for q in GGMLQuantizationType:
        cls = getattr(gq, q.name, None)
        if cls is not None and "dequantize_blocks" in vars(cls):
            out.append(GGMLType(int(q)))
    return out


def _matrix(t: GGMLType, rows: int, k: int, rng) -> tuple[np.ndarray, str]:
    """Bytes [rows, row_bytes] of a random matrix of type t (std 1/sqrt(k)) and how they were made."""
    w = (rng.standard_normal((rows, k)) / np.sqrt(k)).astype(np.float32)
    if t == T.F32:
        return w.view(np.uint8), "tilellm"
    if t in QUANTIZABLE:
        return quantize(w, t), "tilellm"
    try:
        raw = gq.quantize(w, GGMLQuantizationType(int(t)))
        return np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1), "gguf"
    except NotImplementedError:
        info = TYPE_INFO[t]
        nb = rows * k // info.block_size
        return valid_blocks(t, nb, rng, mag=3e-3).reshape(rows, -1), "random"


@pytest.fixture(scope="module")
def every_type_gguf(tmp_path_factory):
    import gguf

    types = gguf_types()
    names = ["token_embd.weight"]
    for i in range(LAYERS):
        names += [f"blk.{i}.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                                  "ffn_down")]
    names.append("output.weight")
    assert len(names) >= len(types)
    head_dim = HIDDEN // HEADS
    kv = KV_HEADS * head_dim
    shapes = {"token_embd": (VOCAB, HIDDEN), "attn_q": (HIDDEN, HIDDEN), "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN),
              "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN),
              "ffn_down": (HIDDEN, FFN), "output": (VOCAB, HIDDEN)}
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("every") / "every-type.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(VOCAB)
    synthetic_module().add_llama_vocab(w, VOCAB)
    made = {}
    for i, name in enumerate(names):
        t = types[i % len(types)]
        rows, k = shapes[name.split(".")[-2]]
        raw, how = _matrix(t, rows, k, rng)
        made[name] = (t, raw, how)
        w.add_tensor(name, raw, raw_dtype=GGMLQuantizationType(int(t)))
    for i in range(LAYERS):
        for n in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{n}.weight", (1 + 0.05 * rng.standard_normal(HIDDEN)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, types, made


def test_every_gguf_type_is_in_the_file_and_reads_bit_exact(every_type_gguf):
    from tilellm.llm.gguf.reader import open_gguf

    path, types, made = every_type_gguf
    assert len(types) >= 20  # gguf 0.19: f32, f16, bf16, 9 legacy / K, 11 iq / ternary / fp4 types
    f = open_gguf(path)
    seen = set()
    for name, (t, raw, _) in made.items():
        v = f.tensors[name]
        assert v.type == t, name
        assert t in DEQUANTIZABLE, t
        np.testing.assert_array_equal(v.data, raw)
        theirs = raw.view(np.float32) if t == T.F32 else gq.dequantize(raw, GGMLQuantizationType(int(t)))
        np.testing.assert_array_equal(v.dequantize(), np.asarray(theirs, np.float32).reshape(v.n_rows, v.k), name)
        seen.add(t)
    assert seen == set(types)


def _logits(path, backend: str) -> np.ndarray:
    with tilellm.load(path, backend=backend, n_threads=2) as m:
        ids = [1, 17, 250, 9, 100, 3, 42, 299]
        prompt = m.eval(ids[:5], logits_all=True)
        steps = [m.eval([t]) for t in ids[5:]]
    return np.vstack([prompt, *steps])


def test_every_type_runs_on_the_reference_backend(every_type_gguf):
    path, _, _ = every_type_gguf
    y = _logits(path, "reference")
    assert y.shape == (8, VOCAB) and np.isfinite(y).all()
    assert y.std() > 1e-3  # the model computes something


def test_default_backend_hands_missing_types_down(every_type_gguf):
    """The default backend (native kernels where it has them, the reference backend for the rest) gives the
    reference backend's logits up to activation rounding."""
    path, types, _ = every_type_gguf
    from tilellm import backend as backends

    be = backends.get("auto", n_threads=2)
    assert all(be.supports(t) for t in types)
    ref = _logits(path, "reference")
    y = _logits(path, "auto")
    assert np.isfinite(y).all()
    err = np.abs(y - ref).mean() / np.abs(ref).mean()
    assert err < 0.05, err
