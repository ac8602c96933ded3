"""The avx512 prompt GEMM on AMX int8 tiles (kernels/src/avx512_q8_amx.h) for q8_0 and q4_0.

For n >= 96 tokens the avx512 variant hands these types to AMX tiles where the CPU and OS have them. The int32
group dots are exact either way and the f32 arithmetic after them is the VNNI panel's, so the contract tested
here is the strongest one: the same bits as the VNNI kernels (amx=False) for every output, on ragged shapes
(m, n not multiples of the 16 x 16 tile; n across the 96-token switch), for 1 and 2 threads, and both close to
the reference. TILELLM_CPU_CAP=avx512 (or amx=False) must turn the path off.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_kernels import check_close, make, reference

from tilellm import kernels
from tilellm.quant import GGMLType

T = GGMLType
TYPES = [T.Q8_0, T.Q4_0]
HAVE_AVX512 = "avx512" in kernels.compiled() and kernels.REQUIRES["avx512"] <= kernels.cpu_features()
HAVE_AMX = HAVE_AVX512 and kernels.AMX_FEATURES <= kernels.cpu_features()
needs_amx = pytest.mark.skipif(not HAVE_AMX, reason="needs the avx512 variant on a CPU with AMX-TILE and AMX-INT8 "
                               "(and no TILELLM_CPU_CAP below it)")


@pytest.fixture(scope="module")
def libs():
    return kernels.load("avx512", n_threads=2, amx=True), kernels.load("avx512", n_threads=2, amx=False)


@needs_amx
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_amx_prompt_path_is_taken(libs, t):
    amx, vnni = libs
    assert amx.uses_amx(t, 96) and amx.uses_amx(t, 512)
    assert not amx.uses_amx(t, 95) and not amx.uses_amx(t, 1)
    assert not vnni.uses_amx(t, 512)
    assert not amx.uses_amx(T.Q4_K, 512) and not amx.uses_amx(T.Q4_1, 512)  # q4_1: measured slower on AMX


@needs_amx
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m,k,n", [(16, 32, 96), (53, 32 * 13, 97), (37, 32 * 7, 130), (130, 32 * 9, 211),
                                   (5, 64, 100), (48, 32 * 64, 160)])
def test_amx_gives_the_vnni_bits(libs, t, m, k, n):
    amx, vnni = libs
    raw, x = make(t, m, k, n, seed=int(t) * 7 + m + n)
    want = vnni.gemm(t, raw, k, vnni.prepare(t, x))
    check_close(want, *reference(vnni, t, raw, k, x))
    p = amx.prepare(t, x)
    for nth in (1, 2):
        y = amx.gemm(t, raw, k, p, n_threads=nth)
        bad = np.flatnonzero((y != want).any(axis=1))
        assert np.array_equal(y, want), (t.name, m, k, n, nth, bad[:10])


@needs_amx
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_amx_batch_invariance_and_gemm_many(libs, t):
    """A token's outputs alone (gemv), in a small batch and in a 96+ prompt are the same bits; gemm_many too."""
    amx, _ = libs
    k = 32 * 11
    ws = [make(t, m, k, 1, seed=m)[0] for m in (64, 16, 37)]
    _, x = make(t, 1, k, 120, seed=11)
    p = amx.prepare(t, x)
    many = amx.gemm_many([(t, w) for w in ws], k, p)
    for w, y in zip(ws, many):
        assert np.array_equal(y, amx.gemm(t, w, k, p))
        for j in (0, 57, 119):
            assert np.array_equal(y[j], amx.gemm(t, w, k, amx.prepare(t, x[j:j + 1]))[0])
        assert np.array_equal(y[:9], amx.gemm(t, w, k, amx.prepare(t, x[:9])))


@needs_amx
def test_amx_extreme_q8_0_values(libs):
    """Every int8 weight value (-128 included) against activations at +-127: the int32 group dots stay exact."""
    amx, vnni = libs
    t, m, k, n = T.Q8_0, 40, 32 * 8, 112
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(m, k // 32 * 34), dtype=np.uint8).reshape(m, k // 32, 34)
    raw[:, :, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), dtype=np.uint8)  # d = 0.5 in every block
    raw[:3, :, 2:] = 0x80  # rows of -128 only
    raw = raw.reshape(m, -1)
    x = np.where(rng.random((n, k)) < 0.5, -1.0, 1.0).astype(np.float32) * 3.0
    y = amx.gemm(t, raw, k, amx.prepare(t, x))
    assert np.array_equal(y, vnni.gemm(t, raw, k, vnni.prepare(t, x)))
    check_close(y, *reference(vnni, t, raw, k, x))


@pytest.mark.skipif(not HAVE_AVX512, reason="needs the avx512 variant on this CPU")
def test_amx_option_off_and_cap():
    """AMX is on by default (amx=True; $TILELLM_AMX=0 turns it off); amx=False always turns the path off; without
    the AMX features (e.g. TILELLM_CPU_CAP=avx512) it is off."""
    off = kernels.load("avx512", n_threads=1, amx=False)
    assert not off.uses_amx(T.Q4_0, 512)
    on = kernels.load("avx512", n_threads=1, amx=True)
    assert on.uses_amx(T.Q4_0, 512) == HAVE_AMX
    assert kernels.options_from_env({})["amx"] is True  # the default (docs/kernels.md)
    assert kernels.options_from_env({"TILELLM_AMX": "1"})["amx"] is True
    assert kernels.options_from_env({"TILELLM_AMX": "0"})["amx"] is False
    # load() without amx= takes the environment's default ($TILELLM_AMX=0 in the environment turns it off)
    default_on = kernels.DEFAULT_OPTIONS["amx"]
    assert kernels.load("avx512", n_threads=1).uses_amx(T.Q4_0, 512) == (HAVE_AMX and default_on)
    with pytest.raises(ValueError):
        kernels.load("avx512", amx="yes")
