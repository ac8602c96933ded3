"""The C causal attention kernel against the numpy one, on ragged shapes, for every kernel variant."""
import numpy as np
import pytest
from conftest import kernel_backends

from tilellm import kernels
from tilellm.backend.ops import causal_attention
from tilellm.errors import ShapeError
from tilellm.kernels.attention import attention

SHAPES = [  # T, n_past, H, Hkv, D
    (1, 0, 4, 2, 32), (7, 5, 8, 2, 32), (130, 0, 8, 4, 64), (1, 300, 32, 4, 64), (33, 70, 6, 6, 80),
    (65, 63, 2, 1, 16), (17, 0, 12, 3, 128),
]


@pytest.mark.parametrize("variant", kernel_backends())
@pytest.mark.parametrize("shape", SHAPES)
def test_c_attention_matches_numpy(variant, shape):
    T, n_past, H, Hkv, D = shape
    rng = np.random.default_rng(T * 1000 + n_past)
    S = n_past + T
    q = (rng.standard_normal((T, H, D)) * 2).astype(np.float32)
    k = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    q0 = q.copy()
    got = attention(kernels.load(variant), q, k, v, n_past, 1 / np.sqrt(D), n_threads=2)
    want = causal_attention(q, k, v, n_past, 1 / np.sqrt(D))
    np.testing.assert_allclose(got, want, atol=5e-6, rtol=1e-5)
    assert np.array_equal(q, q0)  # inputs untouched


def test_numpy_attention_leaves_q_alone():
    q = np.ones((1, 4, 8), np.float32)
    causal_attention(q, np.ones((3, 2, 8), np.float32), np.ones((3, 2, 8), np.float32), 2, 0.5)
    assert np.all(q == 1)


def test_c_attention_rejects_bad_shapes():
    kl = kernels.load("portable")
    q = np.zeros((4, 8, 16), np.float32)
    kv = np.zeros((6, 2, 16), np.float32)
    with pytest.raises(ShapeError, match="positions"):
        attention(kl, q, kv, kv, 0, 1.0)  # S != n_past + T
    with pytest.raises(ShapeError, match="bad attention shape"):
        attention(kl, np.zeros((4, 7, 16), np.float32), kv, kv, 2, 1.0)  # 7 heads over 2 kv heads
    with pytest.raises(ShapeError, match="float32"):
        attention(kl, q.astype(np.float64), kv, kv, 2, 1.0)
    with pytest.raises(ShapeError, match="contiguous"):
        attention(kl, q[:, :, ::2].copy()[:, :, :8][:, :, ::1].repeat(2, axis=2)[:, :, ::2], kv, kv, 2, 1.0)
    with pytest.raises(ShapeError, match="n_threads"):
        attention(kl, q, kv, kv, 2, 1.0, n_threads=0)


@pytest.mark.parametrize("variant", kernel_backends())
@pytest.mark.parametrize("T, n_past, window", [(40, 0, 7), (130, 50, 64), (1, 300, 100), (70, 10, 1), (20, 5, 1000)])
def test_c_sliding_window_matches_numpy(variant, T, n_past, window):
    rng = np.random.default_rng(T + n_past + window)
    H, Hkv, D = 4, 1, 48
    S = n_past + T
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    got = attention(kernels.load(variant), q, k, v, n_past, 0.2, n_threads=2, window=window)
    want = causal_attention(q, k, v, n_past, 0.2, window=window)
    np.testing.assert_allclose(got, want, atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", kernel_backends())
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_c_attention_propagates_non_finite(variant, bad, where):
    """A NaN/inf in a query, key or value reaches the output as non-finite (numpy's softmax does the same), so the
    next layer's checks name the problem; the online softmax must not clamp it away to a finite probability."""
    T, n_past, H, Hkv, D = 5, 67, 8, 2, 64
    rng = np.random.default_rng(7)
    S = n_past + T
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    {"q": q, "k": k, "v": v}[where][0, 0, 3] = bad  # query row 0 / key and value position 0: seen by every row
    got = attention(kernels.load(variant), q, k, v, n_past, 1 / np.sqrt(D), n_threads=2)
    with np.errstate(invalid="ignore", over="ignore"):
        want = causal_attention(q, k, v, n_past, 1 / np.sqrt(D))
    assert not np.all(np.isfinite(want))  # the reference's own verdict
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
