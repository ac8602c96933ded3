"""The avx2 variant's float-weight kernels (f32, f16, bf16): the packed prompt GEMM
(kernels/src/avx2_float_packed.c, 16-row panels x 6 tokens, k in chunks of 256) and the n == 1 gemv
(kernels/src/avx2_float.c, 8 rows at a time), against the float64 reference on ragged shapes, and
their invariances: thread count, a token's batch, the gemv against the tiles, and avx2 against
avx512's packed kernel (the same chunked summation order).

tests/test_kernels.py runs its generic tests on avx2 too; these aim at the edges of this kernel's
blocking: m around the panel (16) and group (8 panels = 128 rows) sizes, n around the 6-token
micro-kernel, the packed threshold and the 516-token blocks of copied activations, k tails inside a chunk
and odd k.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_kernels import RUNNABLE, check_close, make, reference

from tilellm import kernels
from tilellm.quant import GGMLType

T = GGMLType
FLOAT = [T.F32, T.F16, T.BF16]
PACKED_MIN_N = 96  # AVX2_F_PACKED_MIN_N in kernels/src/avx2.h: from this many tokens the packed kernel runs

pytestmark = pytest.mark.skipif("avx2" not in RUNNABLE, reason="the avx2 variant does not run here")


@pytest.fixture(scope="module")
def avx2():
    return kernels.load("avx2", n_threads=2)


@pytest.mark.parametrize("t", FLOAT, ids=lambda t: t.name)
@pytest.mark.parametrize("n_extra", [0, 1, 5, 6, 7, 11, 13, 17])
def test_packed_ragged_shapes(avx2, t, n_extra):
    """Batches from the threshold on, n = PACKED_MIN_N + 0..17 (every remainder of the 6-token tile),
    against the reference: m not a multiple of 16 (1, 15, 17 rows; a 129-row job spanning two panel
    groups with one row in the last panel), k odd, k < 8, k a chunk plus a tail, several chunks."""
    n = PACKED_MIN_N + n_extra
    for m, k in [(1, 7), (15, 3), (17, 257), (40, 513), (129, 300), (33, 1031)]:
        raw, x = make(t, m, k, n, seed=m * 11 + k + n)
        y = avx2.gemm(t, raw, k, avx2.prepare(t, x))
        check_close(y, *reference(avx2, t, raw, k, x))


@pytest.mark.parametrize("t", FLOAT, ids=lambda t: t.name)
def test_packed_thread_and_batch_invariance(avx2, t):
    """The packed kernel's result depends only on k: the same bits for 1, 2 and 3 threads, and for a
    token at any place of any batch on the packed side of the threshold (sub-batches of the last
    PACKED_MIN_N .. n - 1 tokens)."""
    for m, k, n in [(300, 777, 120), (45, 2048 + 40, 110)]:
        raw, x = make(t, m, k, n, seed=m + k)
        p = avx2.prepare(t, x)
        y = avx2.gemm(t, raw, k, p, n_threads=1)
        check_close(y, *reference(avx2, t, raw, k, x))
        for nth in (2, 3):
            assert np.array_equal(y, avx2.gemm(t, raw, k, p, n_threads=nth)), (m, k, n, nth)
        for j0 in (1, 6, n - PACKED_MIN_N):
            sub = avx2.gemm(t, raw, k, avx2.prepare(t, x[j0:]))
            assert np.array_equal(sub, y[j0:]), (m, k, n, j0)


@pytest.mark.parametrize("t", FLOAT, ids=lambda t: t.name)
def test_packed_token_subblocks(avx2, t):
    """A job of more tokens than one copied block of activations (PK_XB = 516: the chunks of up to 516 tokens are
    copied side by side when a job has more than one panel group) runs them block after block: against
    the reference, and each token's bits the same as in a batch of one block (one thread: jobs of all n tokens)."""
    m, k, n = 300, 300, 2 * 516 + 7  # one thread: 2 jobs of 150 rows (10 panels, 2 groups), all n tokens
    raw, x = make(t, m, k, n, seed=7)
    y = avx2.gemm(t, raw, k, avx2.prepare(t, x), n_threads=1)
    check_close(y, *reference(avx2, t, raw, k, x))
    for j0 in (0, 500, n - PACKED_MIN_N):
        j1 = min(n, j0 + 300)
        assert np.array_equal(avx2.gemm(t, raw, k, avx2.prepare(t, x[j0:j1])), y[j0:j1]), (j0, j1)


@pytest.mark.parametrize("t", FLOAT, ids=lambda t: t.name)
def test_gemv_bits_equal_small_batch_tiles(avx2, t):
    """n == 1 takes the 8-row gemv; its arithmetic per output is the 3 x 4 tiles' (lane p % 8, tree at
    the end), so each token alone gives the bits it gets in a batch of fewer than PACKED_MIN_N tokens.
    m = 1 .. 17 and 37 cover every remainder of both row counts; k below 8, odd, and off the 32-value
    step."""
    for m in [*range(1, 18), 37]:
        for k in [1, 7, 33, 61, 1000]:
            n = 9
            raw, x = make(t, m, k, n, seed=m * 101 + k)
            batch = avx2.gemm(t, raw, k, avx2.prepare(t, x))
            check_close(batch, *reference(avx2, t, raw, k, x))
            for j in (0, 4, 8):
                one = avx2.gemm(t, raw, k, avx2.prepare(t, x[j:j + 1]))
                assert np.array_equal(one, batch[j:j + 1]), (m, k, j)


@pytest.mark.parametrize("t", FLOAT, ids=lambda t: t.name)
def test_packed_bit_identical_to_avx512(t):
    """avx2's packed kernel sums like avx512's (an FMA chain per 256-value chunk from zero, the chunk sums
    added in order), so above both variants' thresholds they agree bit for bit (bf16: avx512's exact
    path, f32 activations, as avx2 has)."""
    if "avx512" not in RUNNABLE:
        pytest.skip("needs avx512")
    a2, a5 = kernels.load("avx2"), kernels.load("avx512", bf16_exact=True)
    for m, k, n in [(70, 1000, 260), (33, 257, 300)]:
        raw, x = make(t, m, k, n, seed=m + k + n)
        assert np.array_equal(a2.gemm(t, raw, k, a2.prepare(t, x)), a5.gemm(t, raw, k, a5.prepare(t, x))), (m, k, n)


def test_packed_nonfinite_weights_stay_in_their_rows(avx2):
    """inf / nan in one weight row reach only that row's outputs (the packed panels' zero padding and the
    masked stores of a ragged panel keep them out of their neighbours)."""
    m, k, n = 19, 300, PACKED_MIN_N + 3
    raw, x = make(T.F32, m, k, n, seed=3)
    w = raw.view(np.float32).copy()
    w[17, 5], w[18, 299] = np.inf, np.nan
    y = avx2.gemm(T.F32, w.view(np.uint8), k, avx2.prepare(T.F32, x))
    assert np.isfinite(y[:, :17]).all()
    assert not np.isfinite(y[:, 17:]).any()
