"""The float32 building blocks: the lean rms_norm / gelu_tanh_mul give the straightforward formulas' bits."""
from __future__ import annotations

import numpy as np
import pytest

from tilellm.backend.ops import rms_norm
from tilellm.llm.models.layers import gelu_tanh, gelu_tanh_mul


def _rms_norm_plain(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True, dtype=np.float32)
    return (x * (1.0 / np.sqrt(ms + np.float32(eps))).astype(np.float32)) * w


@pytest.mark.parametrize("shape", [(1, 640), (1, 4, 256), (1, 1), (1, 2048), (7, 640), (3, 5, 256), (512, 2048)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 1e4])
def test_rms_norm_bits(shape, scale):
    rng = np.random.default_rng(len(shape) * 1000 + shape[-1])
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    for eps in (1e-6, 1e-5):
        np.testing.assert_array_equal(rms_norm(x, w, eps), _rms_norm_plain(x, w, eps))


def test_rms_norm_special_rows():
    w = np.ones(4, np.float32)
    for row in ([0, 0, 0, 0], [np.nan, 1, 2, 3], [np.inf, 1, 2, 3], [3e38, 3e38, 1, 1]):
        x = np.array([row], np.float32)
        with np.errstate(all="ignore"):
            got, want = rms_norm(x, w, 1e-6), _rms_norm_plain(x, w, 1e-6)
        np.testing.assert_array_equal(got, want)


def test_gelu_tanh_mul_bits():
    rng = np.random.default_rng(3)
    for shape in [(1, 2048), (512, 2048), (3, 7)]:
        g = (rng.standard_normal(shape) * 4).astype(np.float32)
        u = rng.standard_normal(shape).astype(np.float32)
        want = gelu_tanh(g) * u
        np.testing.assert_array_equal(gelu_tanh_mul(g.copy(), u), want)
