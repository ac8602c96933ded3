"""numerics="ggml": llama.cpp's rounding choices as an opt-in (activations per 32/256 values, fp16 GELU
table, fp16 K/V/q), so users can compare with llama.cpp; the default stays the more accurate one."""
from __future__ import annotations

import numpy as np
import pytest

import tilellm
from tilellm import backend as backends
from conftest import fixture_path
from tilellm import kernels
from tilellm.llm.layers import gelu_tanh, gelu_tanh_ggml


@pytest.fixture(autouse=True)
def _restore_rounding():
    yield
    kernels.set_act_rounding("fine")


def test_gelu_table_matches_ggml_definition():
    x = np.concatenate([np.linspace(-12, 12, 20001, dtype=np.float32), np.float32([-10, 10, 0, -0.0])])
    y = gelu_tanh_ggml(x)
    inside = (x > -10) & (x < 10)
    want = gelu_tanh(x[inside].astype(np.float16).astype(np.float32)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(y[inside], want)
    np.testing.assert_array_equal(y[x >= 10], x[x >= 10])
    assert (y[x <= -10] == 0).all()
    # coarser than the float GELU, but only at fp16 resolution
    err = np.abs(y[inside] - gelu_tanh(x[inside]))
    assert 0 < err.max() < 1e-2 * max(1.0, float(np.abs(x[inside]).max()))


def test_ggml_numerics_rounds_kv_and_changes_logits_slightly():
    path = fixture_path("llama2-micro-q8_0.gguf")
    ids = [1, 450, 3996, 1354, 1701, 432, 2204, 975, 278, 3366, 1203]
    be = "avx512" if "avx512" in backends.available() else "portable"
    with tilellm.load(path, backend=be, n_threads=2) as m:
        a = m._impl.eval(ids, logits_all=True)
        k_default = m._impl.k_cache[0, :len(ids)].copy()
    with tilellm.load(path, backend=be, n_threads=2, numerics="ggml") as m:
        assert m._impl.numerics == "ggml"
        b = m._impl.eval(ids, logits_all=True)
        k = m._impl.k_cache[0, :len(ids)]
        np.testing.assert_array_equal(k, k.astype(np.float16).astype(np.float32))  # fp16 K cache values
    assert not np.array_equal(k_default, k_default.astype(np.float16).astype(np.float32))  # default stays f32
    d = np.abs(a - b)
    assert d.max() > 0, "ggml numerics changed nothing"
    assert d.mean() < 0.05 * np.abs(a).mean(), d.mean()
    # loading with the default numerics resets the process-wide activation rounding
    with tilellm.load(path, backend=be, n_threads=2) as m:
        np.testing.assert_array_equal(m._impl.eval(ids, logits_all=True), a)


def test_numerics_is_validated():
    with pytest.raises(ValueError, match="numerics"):
        tilellm.load(fixture_path("llama2-micro-q8_0.gguf"), numerics="fast")
