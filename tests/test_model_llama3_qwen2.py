"""LLaMA-3 (llama3 rope scaling via rope_freqs, tied embeddings, byte-level BPE) and Qwen2 (q/k/v biases,
NEOX rope, padded vocabulary) against transformers (`hfdq`) and llama.cpp, from the shared fixtures."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    check_greedy_continuation,
    check_prompt_logits,
    fixture_model,
    fixture_path,
    kernel_backends,
)

from tilellm import backend as backends
from tilellm.llm.gguf.reader import open_gguf
from tilellm.llm.models.architectures import model_class

FILES = ["llama3-micro-q8_0", "llama3-micro-q4_0", "qwen2-micro-q8_0"]
# llama.cpp vs hfdq over the whole vocabulary, every prompt position (compare.json): max, token-weighted mean
LLAMA_CPP_DELTA = {"llama3-micro-q8_0": (3.118e-01, 4.105e-02), "llama3-micro-q4_0": (3.465e-01, 3.989e-02),
                   "qwen2-micro-q8_0": (1.593e-01, 2.176e-02)}


def _model(name: str, be: str = "reference", n_batch: int = 512):
    return fixture_model(name, be, n_batch)


def _ref(name: str):
    return np.load(fixture_path(f"{name}.npz"))


@pytest.mark.parametrize("name", FILES)
def test_reference_backend_matches_transformers(name):
    check_prompt_logits(_model(name, "reference", n_batch=64), _ref(name), range(4))  # P3 needs two batches


@pytest.mark.parametrize("name", FILES)
def test_greedy_continuation_matches_transformers(name):
    check_greedy_continuation(_model(name, "reference"), _ref(name), range(4), name)


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("name", FILES)
def test_kernel_backends_as_close_as_llama_cpp(name, be):
    """Whole-vocabulary mean |Δ| against hfdq (full rows from the reference backend, pinned to hfdq above)."""
    ref = _ref(name)
    mref, m = _model(name, "reference"), _model(name, be)
    mx, tot, cnt = 0.0, 0.0, 0
    for i in range(4):
        mref.reset()
        m.reset()
        d = np.abs(m.eval(ref[f"token_ids_p{i}"], logits_all=True) - mref.eval(ref[f"token_ids_p{i}"], logits_all=True))
        mx, tot, cnt = max(mx, float(d.max())), tot + float(d.sum(dtype=np.float64)), cnt + d.size
    lmx, lmean = LLAMA_CPP_DELTA[name]
    assert tot / cnt <= lmean, f"{be}/{name}: mean |Δ| {tot / cnt:.4g} > llama.cpp's {lmean:.4g}"
    assert mx <= 2 * lmx, f"{be}/{name}: max |Δ| {mx:.3g} > 2 x llama.cpp's {lmx:.3g}"


def test_qwen2_biases_and_llama3_rope_freqs_are_used():
    """Dropping the qwen2 biases or llama3's rope_freqs must change the logits (they are not decorative)."""
    for name, drop in (("qwen2-micro-q8_0", "blk.0.attn_q.bias"), ("llama3-micro-q8_0", "rope_freqs.weight")):
        ref = _ref(name)
        f = open_gguf(fixture_path(f"{name}.gguf"))
        ok = model_class(f.arch)(f, backends.get("reference"), n_ctx=256).eval(ref["token_ids_p0"])
        del f.tensors[drop]
        altered = model_class(f.arch)(f, backends.get("reference"), n_ctx=256).eval(ref["token_ids_p0"])
        assert np.abs(ok - altered).max() > 1e-2, drop


def _with_scaling(name: str, **keys):
    f = open_gguf(fixture_path(f"{name}.gguf"))
    for k, v in keys.items():
        f.metadata[f"{f.arch}.rope.scaling.{k}"] = v
    return model_class(f.arch)(f, backends.get("reference"), n_ctx=256, type_k="f32", type_v="f32")


def test_rope_scaling_keys():
    """`{arch}.rope.scaling.*`: linear divides every frequency; yarn ramps them and scales q.k; others refused."""
    from tilellm.errors import GGUFError, UnsupportedError
    from tilellm.llm.models.yarn import YarnParams, yarn_inv_freq

    plain = _model("qwen2-micro-q8_0", "reference")
    ids = _ref("qwen2-micro-q8_0")["token_ids_p0"]
    base_logits = plain.eval(ids)
    lin = _with_scaling("qwen2-micro-q8_0", type="linear", factor=4.0)
    np.testing.assert_allclose(lin.rope.inv_freq, plain.rope.inv_freq / 4.0, rtol=1e-12)
    assert lin.kq_mult == 1.0 and np.abs(lin.eval(ids) - base_logits).max() > 1e-2
    y = _with_scaling("qwen2-micro-q8_0", type="yarn", factor=8.0, original_context_length=32)
    want = yarn_inv_freq(plain.hparams.n_rot, plain.hparams.rope_base, YarnParams(factor=8.0, n_ctx_orig=32))
    np.testing.assert_allclose(y.rope.inv_freq, want, rtol=1e-12)
    assert y.kq_mult == pytest.approx((1 + 0.1 * np.log(8.0)) ** 2)
    assert np.isfinite(y.eval(ids)).all()
    with pytest.raises(UnsupportedError, match="longrope"):
        _with_scaling("qwen2-micro-q8_0", type="longrope", factor=2.0)
    with pytest.raises(GGUFError, match="factor"):
        _with_scaling("qwen2-micro-q8_0", type="linear", factor=-2.0)
