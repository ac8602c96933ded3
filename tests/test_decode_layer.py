"""The one-call decode step (KernelBackend.plan_layer / decode_layer, C tl_decode_layer): on every kernel backend
and on LLaMA-2, LLaMA-3 (rope_freqs) and Qwen2 (q/k/v biases, NEOX rope) fixtures, token-by-token logits must equal
the step-by-step path's; it is used only where it applies, and bad arguments are refused."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture_model, fixture_path, kernel_backends

from tilellm.errors import ShapeError

FILES = ["llama2-micro-q8_0", "llama2-micro-f32", "llama3-micro-q4_0", "qwen2-micro-q8_0"]


def _decode(m, ids, fused: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of ids[3:] decoded one by one after ids[:3], and the k / v caches it leaves."""
    plans = m._layer_plans()
    m._plans_cache = (m.backend, plans if fused else None)
    try:
        m.reset()
        m.eval(ids[:3])
        logits = np.stack([m.eval([t]) for t in ids[3:]])
        n = len(ids)
        return logits, m.k_cache[:, :n].copy(), m.v_cache[:, :n].copy()
    finally:
        m._plans_cache = None  # the model is shared by the session (conftest): leave it as found


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("name", FILES)
def test_one_call_layers_equal_the_steps(name, be):
    m = fixture_model(name, be, 512)
    assert m._layer_plans() is not None, f"{be} should run {name}'s layers in one call"
    ids = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]
    ids = [i % m.n_vocab for i in ids]
    (fused, kf, vf), (steps, ks, vs) = _decode(m, ids, True), _decode(m, ids, False)
    # the same C steps in the same order; only the rope's products may round differently from numpy's (the
    # portable build does not fuse them into FMAs, numpy's complex multiply does; NEOX rope the other way
    # round): measured up to 3.6e-6 on logits of magnitude ~10, equal bits on the other fixtures
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused, steps, rtol=0, atol=2e-6 * np.abs(steps).max())
    # and the k / v it wrote are the ones the steps write (layer 0's v exactly: no rope has touched it yet)
    np.testing.assert_allclose(kf, ks, rtol=0, atol=2e-6 * np.abs(ks).max())
    np.testing.assert_allclose(vf, vs, rtol=0, atol=2e-6 * np.abs(vs).max())
    assert np.array_equal(vf[0], vs[0])


def test_where_it_does_not_apply():
    ref = fixture_model("llama2-micro-q8_0", "reference", 512)
    assert ref._layer_plans() is None  # the numpy backend has no fused step
    bes = kernel_backends()
    if not bes:
        pytest.skip("no kernel backend here")
    assert fixture_model("llama2-micro-q8_0", bes[0], 512)._layer_plans() is not None
    from tilellm import backend as backends
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.llama import LlamaModel

    f = open_gguf(fixture_path("llama2-micro-q8_0.gguf"))
    m = LlamaModel(f, backends.get(bes[0], n_threads=2, act_rounding="ggml"), n_ctx=256, numerics="ggml")
    assert m._layer_plans() is None  # fp16 K/V rounding: the step path only


def test_decode_layer_refuses_bad_arguments():
    bes = kernel_backends()
    if not bes:
        pytest.skip("no kernel backend here")
    m = fixture_model("llama2-micro-q8_0", bes[0], 512)
    be, (P, *_) = m.backend, m._layer_plans()
    hp = m.hparams
    h = np.zeros(hp.n_embd, np.float32)
    cos, sin = m.rope.tables(np.arange(0, 1))
    with pytest.raises(ShapeError, match="outside the cache"):
        be.decode_layer(P, h, cos, sin, m.n_ctx, 0.1)
    with pytest.raises(ShapeError, match="h must be"):
        be.decode_layer(P, np.zeros(hp.n_embd + 1, np.float32), cos, sin, 0, 0.1)
    with pytest.raises(ShapeError, match="cos must be"):
        be.decode_layer(P, h, cos.astype(np.float64), sin, 0, 0.1)
    h.setflags(write=False)
    with pytest.raises(ShapeError, match="read-only"):
        be.decode_layer(P, h, cos, sin, 0, 0.1)
    other = fixture_model("llama2-micro-q8_0", bes[-1], 512)
    if other.backend is not be:
        with pytest.raises(ShapeError, match="this backend"):
            other.backend.decode_layer(P, np.zeros(hp.n_embd, np.float32), cos, sin, 0, 0.1)
    L = m.layers[0]
    with pytest.raises(ShapeError, match="caches"):
        be.plan_layer(L, m.k_cache[0][:, :1], m.v_cache[0])
