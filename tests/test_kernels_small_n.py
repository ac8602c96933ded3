"""The small-n GEMM path (2 <= n <= 16 tokens, batched decode: avx512_q8_small.h) against the gemv.

Batch invariance is the server's contract (docs/serving.md): a token's outputs must be the same bits
whether it is multiplied alone (n = 1: the gemv), with a few others (the small-n path where a kernel has
one) or in a larger batch (the panel tiles). Every quantized type, every runnable variant, n = 1..18
(across the small-n limit), ragged m (a short last panel), one and several weights per call (tl_gemm_many
shares the rows of q/k/v out as one list), 1 and 2 threads.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_kernels import RUNNABLE, check_close, make, reference
from test_kernels_kquant import make as kmake
from test_kernels_kquant import reference as kreference

from tilellm import kernels
from tilellm.quant import GGMLType

T = GGMLType
QUANT = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q4_K, T.Q5_K, T.Q6_K]


@pytest.fixture(scope="module", params=RUNNABLE)
def lib(request):
    return kernels.load(request.param, n_threads=2)


def _k(t: GGMLType) -> int:
    return 768 if t in (T.Q4_K, T.Q5_K, T.Q6_K) else 32 * 13  # an odd block count (q4_0's gemv pairs blocks)


@pytest.mark.parametrize("t", QUANT, ids=lambda t: t.name)
def test_every_batch_size_gives_the_gemv_bits(lib, t):
    if not lib.supports(t):
        pytest.skip(f"{lib.variant} has no {t.name} kernel")
    k, m = _k(t), 16 * 3 + 5
    kq = t in (T.Q5_0, T.Q4_K, T.Q5_K, T.Q6_K)  # weights made as test_kernels_kquant makes them
    raw, x = (kmake if kq else make)(t, m, k, 18, seed=int(t) + 5)
    alone = np.concatenate([lib.gemm(t, raw, k, lib.prepare(t, x[j:j + 1])) for j in range(18)])
    check_close(alone, *(kreference(t, raw, k, x) if kq else reference(lib, t, raw, k, x)))
    for n in range(2, 19):
        for nth in (1, 2):
            y = lib.gemm(t, raw, k, lib.prepare(t, x[:n]), n_threads=nth)
            assert np.array_equal(y, alone[:n]), (t.name, n, nth, np.flatnonzero((y != alone[:n]).any(axis=1)))


@pytest.mark.parametrize("t", [T.Q8_0, T.Q4_0, T.Q4_1], ids=lambda t: t.name)
def test_gemm_many_small_n_equals_one_by_one(lib, t):
    """q/k/v-like products of different heights in one call: each equals its own gemm and, per token, its gemv."""
    if not lib.supports(t):
        pytest.skip(f"{lib.variant} has no {t.name} kernel")
    k = 32 * 12
    ws = [make(t, m, k, 1, seed=m)[0] for m in (64, 16, 37)]
    _, x = make(t, 1, k, 8, seed=3)
    for n in (2, 5, 8):
        p = lib.prepare(t, x[:n])
        many = lib.gemm_many([(t, w) for w in ws], k, p)
        for w, y in zip(ws, many):
            assert np.array_equal(y, lib.gemm(t, w, k, p))
            for j in range(n):
                assert np.array_equal(y[j:j + 1], lib.gemm(t, w, k, lib.prepare(t, x[j:j + 1])))


def test_small_n_strided_rows_and_outputs(lib):
    """Weights taken every other row (ldw > row bytes), into a given output: the gemv's bits."""
    t, k = T.Q4_0, 32 * 8
    raw, x = make(t, 2 * 21, k, 6, seed=11)
    w = raw[::2]
    p = lib.prepare(t, x)
    out = np.full((6, 21), np.nan, np.float32)
    assert lib.gemm(t, w, k, p, out=out) is out
    for j in range(6):
        assert np.array_equal(out[j:j + 1], lib.gemm(t, w, k, lib.prepare(t, x[j:j + 1])))
