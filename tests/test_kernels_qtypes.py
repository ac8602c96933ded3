"""q5_1, iq4_nl, iq4_xs, q2_K and q3_K kernels (kquants.h's second scheme) against exact numpy references,
on every compiled variant this CPU runs: ragged shapes, thread and batch invariance, the widest integer sums,
activation sharing, ggml activation rounding.

Reference = weights dequantized by tilellm.quant (bit-exact with gguf.quants, tests/test_quant.py; float64) x
activations quantized exactly as the kernels do (test_kernels.q8_act_ref), summed in float64. Weights are random
bytes (every quant / scale / high-bit pattern) with finite f16 scale fields, so a wrong bit order or scale
decoding cannot pass.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_kernels import RUNNABLE, check_close
from test_kernels_kquant import (
    check_batch_independent,
    check_extreme_quants,
    check_matches_reference,
    check_threads_bit_identical,
    ggml_act_ref,
    make_from,
    need,
    reference,
)

from tilellm import kernels
from tilellm.quant import TYPE_INFO, GGMLType, dequantize

T = GGMLType
QX_TYPES = [T.Q5_1, T.IQ4_NL, T.IQ4_XS, T.Q2_K, T.Q3_K]
SMALL_BLOCK = {T.Q5_1, T.IQ4_NL}  # 32 values per block; the others 256
# f16 fields (byte offset, low, high magnitude, signed) per type; everything else random bytes
F16_FIELDS = {
    T.Q5_1: [(0, 1e-3, 3e-2, True), (2, 1e-2, 0.3, True)],  # d, m
    T.IQ4_NL: [(0, 1e-4, 3e-3, True)],  # d (quants up to 127)
    T.IQ4_XS: [(0, 1e-5, 2e-4, True)],  # d (x sub-block scales up to 32 x quants up to 127)
    T.Q2_K: [(80, 1e-3, 3e-2, True), (82, 1e-3, 3e-2, True)],  # d, dmin
    T.Q3_K: [(108, 1e-4, 3e-3, True)],  # d (x scales up to 32)
}
ACT = {T.Q5_1: T.Q8_1, T.IQ4_NL: T.Q8_0, T.IQ4_XS: T.Q8_K, T.Q2_K: T.Q8_K, T.Q3_K: T.Q8_K}


@pytest.fixture(scope="module", params=RUNNABLE)
def lib(request):
    return kernels.load(request.param, n_threads=2)


def make_weights(t: GGMLType, m: int, k: int, rng) -> np.ndarray:
    ts, bs = TYPE_INFO[t].type_size, TYPE_INFO[t].block_size
    nb = m * k // bs
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    for off, lo, hi, signed in F16_FIELDS[t]:
        v = rng.uniform(lo, hi, nb) * (rng.choice([-1.0, 1.0], nb) if signed else 1.0)
        raw[:, off:off + 2] = v.astype(np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(m, k // bs * ts)


def make(t: GGMLType, m: int, k: int, n: int, seed: int):
    return make_from(make_weights, t, m, k, n, seed)


# (m, k, n): ragged against 4- and 8-row tiles and any token tile, n = 1, k = one block
K_SHAPES = [(1, 256, 1), (3, 256, 2), (16, 256, 16), (5, 512, 3), (17, 768, 7), (33, 256, 9), (64, 1024, 1),
            (65, 512, 4), (31, 2560, 13), (300, 2048, 77), (129, 2048, 1), (18, 256, 300)]
B32_SHAPES = [(1, 32, 1), (1, 32, 2), (3, 32, 1), (5, 64, 3), (7, 96, 1), (13, 128, 5), (17, 160, 7),
              (33, 256, 9), (64, 640, 1), (65, 64, 4), (300, 1024, 77), (129, 2048, 1), (10, 4096, 13)]
CASES = [(t, s) for t in QX_TYPES for s in (B32_SHAPES if t in SMALL_BLOCK else K_SHAPES)]


@pytest.mark.parametrize("t,shape", CASES, ids=[f"{t.name}-{'x'.join(map(str, s))}" for t, s in CASES])
def test_gemm_matches_reference(lib, t, shape):
    check_matches_reference(lib, t, shape, make)


def test_portable_supports_all_and_act_types():
    p = kernels.load("portable")
    for t in QX_TYPES:
        assert p.supports(t)
        assert p.act_type(t) == ACT[t]


def test_x86_variants_are_native():
    """The types have their own kernels on avx2 and avx512 (not a hand-down to portable), and avxvnni links avx2's
    in (one library for every type a file mixes)."""
    for v in ("avx2", "avx512", "avxvnni"):
        if v in RUNNABLE:
            lb = kernels.load(v)
            assert all(lb.supports(t) for t in QX_TYPES), v


def test_neon_and_sme_variants_are_native():
    """neon has its own kernels for these types and the K-quants; the SME variants serve them with the NEON kernels
    linked in (not a hand-down to another library), so a Q4_K_M layer stays one C call there too."""
    for v in ("neon", "sme", "sme2"):
        if v in RUNNABLE:
            lb = kernels.load(v)
            assert all(lb.supports(t) for t in (*QX_TYPES, T.Q5_0, T.Q4_K, T.Q5_K, T.Q6_K)), v


@pytest.mark.parametrize("t", QX_TYPES, ids=lambda t: t.name)
def test_act_types(lib, t):
    need(lib, t)
    assert lib.act_type(t) == ACT[t]


@pytest.mark.parametrize("t", QX_TYPES, ids=lambda t: t.name)
def test_threads_bit_identical(lib, t):
    check_threads_bit_identical(lib, t, make)


@pytest.mark.parametrize("t", QX_TYPES, ids=lambda t: t.name)
def test_token_result_independent_of_batch(lib, t):
    check_batch_independent(lib, t, 160 if t in SMALL_BLOCK else 768, make)


def _extreme_weights(t: GGMLType, m: int, k: int, rng) -> np.ndarray:
    """Every quant at its largest magnitude (q5_1 31, iq4 -127, q2_K 3, q3_K 7 unsigned / 3 signed) with the
    largest scales, in rows alternating with random bytes: the widest integer sums a kernel meets."""
    raw = make_weights(t, m, k, rng).copy()
    ts = TYPE_INFO[t].type_size
    ext = raw.reshape(m, -1, ts)[::2]
    if t == T.Q5_1:
        ext[..., 4:] = 0xFF
    elif t == T.IQ4_NL:
        ext[..., 2:] = 0x00  # nibble 0: -127
    elif t == T.IQ4_XS:
        ext[..., 2:8] = 0x00  # scales -32
        ext[..., 8:] = 0x00
    elif t == T.Q2_K:
        ext[..., 0:80] = 0xFF  # sc = m = 15, q = 3
    else:
        ext[..., 0:96] = 0xFF  # q = 3 (high bit set)
        ext[..., 96:108] = 0x00  # scales -32
    return raw


@pytest.mark.parametrize("t", QX_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 5])
def test_extreme_quants_no_int16_saturation(lib, t, n):
    check_extreme_quants(lib, t, n, _extreme_weights)


def test_shares_prepared_activations(lib):
    """One Prepared serves every weight type of its activation family (q8 act layout, one scale per 16)."""
    rng = np.random.default_rng(4)
    k, n = 512, 9
    x = rng.standard_normal((n, k)).astype(np.float32)
    for fam in (T.Q8_0, T.Q8_1, T.Q8_K):
        members = [t for t in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q6_K, *QX_TYPES)
                   if lib.supports(t) and lib.act_type(t) == fam]
        qx = [t for t in members if t in QX_TYPES]
        if not qx:
            continue
        p = lib.prepare(members[0], x)
        for t in qx:
            raw, _ = make(t, 21, k, n, seed=int(t))
            ref, scale = reference(t, raw, k, x)
            check_close(lib.gemm(t, raw, k, p), ref, scale)


@pytest.mark.parametrize("t", QX_TYPES, ids=lambda t: t.name)
def test_avx2_bit_identical_to_avx512(t):
    """avx2_qx.c is one source in both variants (vpmaddubsw vs vpdpbusd: the same exact integers, then the
    same f32 operations), so they agree bit for bit, for the gemv and the panel path."""
    if not {"avx2", "avx512"} <= set(RUNNABLE):
        pytest.skip("needs both avx2 and avx512")
    a2, a5 = kernels.load("avx2"), kernels.load("avx512")
    k = 256 if t in SMALL_BLOCK else 1024
    for m, n in [(37, 1), (37, 9), (300, 1), (20, 70)]:
        raw, x = make(t, m, k, n, seed=m + n)
        assert np.array_equal(a2.gemm(t, raw, k, a2.prepare(t, x)), a5.gemm(t, raw, k, a5.prepare(t, x))), (m, n)


@pytest.mark.parametrize("t", QX_TYPES, ids=lambda t: t.name)
def test_ggml_act_rounding(lib, t):
    """In ggml mode activations take ggml's partner type's granularity (q8_0 / q8_1: per 32, q8_K: per 256)."""
    need(lib, t)
    lib = kernels.load(lib.variant, n_threads=2, act_rounding="ggml")
    span = 256 if ACT[t] == T.Q8_K else 32
    for m, k, n in [(5, 256, 1), (17, 512, 3), (33, 768, 9)]:
        rng = np.random.default_rng(m + k + n)
        raw = make_weights(t, m, k, rng)
        x = (rng.standard_normal((n, k)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
        x[:, 5] *= 20
        y = lib.gemm(t, raw, k, lib.prepare(t, x))
        wd = dequantize(raw, t, k).astype(np.float64).reshape(-1, k)
        xd = ggml_act_ref(x, span)
        check_close(y, xd @ wd.T, np.abs(xd) @ np.abs(wd).T)
