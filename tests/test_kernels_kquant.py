"""q5_0 and K-quant (q4_K, q5_K, q6_K) kernels against exact numpy references, on every compiled
variant this CPU runs, plus the shared q8 activation layout and a model-level check.

Reference = weights dequantized by tilellm.quant (float64) x activations quantized exactly as the
kernels do for every quantized weight type (test_kernels.q8_act_ref: int8 with one f32 scale per
16 values, ggml's rounding; not ggml's q8_K, whose single scale per 256 is coarser), summed in
float64.
K-quant weights are random bytes (every scale / min / nibble / high-bit pattern) with finite f16
super-block scales, so a wrong bit order or scale decoding cannot pass.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture_path, kernel_backends
from test_kernels import RUNNABLE, check_close, q8_act_groups, q8_act_ref

from tilellm import backend as backends
from tilellm import kernels
from tilellm.errors import NumericalError
from tilellm.quant import TYPE_INFO, GGMLType, dequantize, quantize, row_bytes

T = GGMLType
KTYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
NEW_TYPES = [T.Q5_0, *KTYPES]


@pytest.fixture(scope="module", params=RUNNABLE)
def lib(request):
    return kernels.load(request.param, n_threads=2)


def need(lib, t):
    """Skips the test where this variant has no kernel of type t (portable must have every one)."""
    if not lib.supports(t):
        assert lib.variant != "portable", f"portable must support {t.name}"
        pytest.skip(f"{lib.variant} has no {t.name} kernel (Python falls back to a lower variant)")


def _f16_field(rng, nb: int, lo: float, hi: float, signed: bool) -> np.ndarray:
    v = rng.uniform(lo, hi, nb) * (rng.choice([-1.0, 1.0], nb) if signed else 1.0)
    return v.astype(np.float16).view(np.uint8).reshape(nb, 2)


def make_weights(t: GGMLType, m: int, k: int, rng) -> np.ndarray:
    if t == T.Q5_0:
        w = (rng.standard_normal((m, k)) * rng.uniform(0.1, 3.0, size=(m, 1))).astype(np.float32)
        return quantize(w, t)
    ts = TYPE_INFO[t].type_size
    nb = m * k // 256
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    if t in (T.Q4_K, T.Q5_K):
        raw[:, 0:2] = _f16_field(rng, nb, 1e-3, 2e-2, signed=True)   # d
        raw[:, 2:4] = _f16_field(rng, nb, 1e-3, 2e-2, signed=True)   # dmin
    else:
        raw[:, 208:210] = _f16_field(rng, nb, 1e-4, 2e-3, signed=True)  # d (scales are full int8)
    return raw.reshape(m, k // 256 * ts)


def make_from(make_weights, t: GGMLType, m: int, k: int, n: int, seed: int):
    """Weights [m, k] of type t by `make_weights(t, m, k, rng)` (raw bytes) and float32 activations [n, k]."""
    rng = np.random.default_rng(seed)
    raw = make_weights(t, m, k, rng)
    x = (rng.standard_normal((n, k)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
    assert raw.dtype == np.uint8 and raw.shape == (m, row_bytes(t, k))
    return raw, x


def make(t: GGMLType, m: int, k: int, n: int, seed: int):
    return make_from(make_weights, t, m, k, n, seed)


def reference(t: GGMLType, raw: np.ndarray, k: int, x: np.ndarray):
    wd = dequantize(raw, t, k).astype(np.float64).reshape(-1, k)
    xd = q8_act_ref(x)
    return xd @ wd.T, np.abs(xd) @ np.abs(wd).T


# (m, k, n): ragged against 4-, 8- and 16-row tiles and any token tile, n = 1, k = one super-block
K_SHAPES = [(1, 256, 1), (3, 256, 2), (16, 256, 16), (5, 512, 3), (17, 768, 7), (33, 256, 9), (64, 1024, 1),
            (65, 512, 4), (31, 2560, 13), (300, 2048, 77), (129, 2048, 1), (40, 4096, 1), (18, 256, 300)]
Q5_SHAPES = [(1, 32, 1), (1, 32, 2), (3, 32, 1), (5, 64, 3), (7, 96, 1), (13, 128, 5), (17, 160, 7),
             (33, 256, 9), (64, 640, 1), (65, 64, 4), (300, 1024, 77), (129, 2048, 1), (10, 4096, 13)]


@pytest.mark.parametrize("t", KTYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", K_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kquant_gemm_matches_reference(lib, t, shape):
    check_matches_reference(lib, t, shape, make)


@pytest.mark.parametrize("shape", Q5_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_q5_0_gemm_matches_reference(lib, shape):
    need(lib, T.Q5_0)
    m, k, n = shape
    raw, x = make(T.Q5_0, m, k, n, seed=m * 1000 + k + n)
    y = lib.gemm(T.Q5_0, raw, k, lib.prepare(T.Q5_0, x))
    ref, scale = reference(T.Q5_0, raw, k, x)
    check_close(y, ref, scale)


def test_portable_supports_all_and_act_types():
    p = kernels.load("portable")
    for t in NEW_TYPES:
        assert p.supports(t)
    assert p.act_type(T.Q5_0) == T.Q8_0
    for t in KTYPES:
        assert p.act_type(t) == T.Q8_K


@pytest.mark.parametrize("t", NEW_TYPES, ids=lambda t: t.name)
def test_act_types(lib, t):
    need(lib, t)
    assert lib.act_type(t) == (T.Q8_0 if t == T.Q5_0 else T.Q8_K)


QTYPES_ALL = [T.Q8_0, T.Q4_0, T.Q4_1, *NEW_TYPES]


def test_q8_act_layout(lib):
    """Prepared rows = int8 qs[k] | f32 d[k/16] | f32 s[k/16] | int16 isum[k/16] | zero pad to 64
    (tl_internal.h), byte for byte, identical for every quantized weight type; incl. an all-zero
    group, halves (round half away from zero), a group whose largest |x| is negative. A nan is refused
    (test_nonfinite.py checks the bytes C writes for it)."""
    ts = [t for t in QTYPES_ALL if lib.supports(t)]
    rng = np.random.default_rng(5)
    n, k = 5, 768
    x = (rng.standard_normal((n, k)) * 3).astype(np.float32)
    x[1, 256:512] = 0.0
    x[1, 528:544] = 0.0
    x[2, :16] = [-127.0, 2.5, 3.5, -2.5, 0.5, -0.5, 126.5, -126.5, 1.5, 0, 0, 0, 0, 0, 0, 0]
    x[3, 40] = np.nan
    for t in ts:
        with pytest.raises(NumericalError, match=r"\[3, 40\] is nan"):
            lib.prepare(t, x)
    x[3, 40] = 0.0
    ng = k // 16
    used = k + 10 * ng
    ld = (used + 63) // 64 * 64
    q, d = q8_act_groups(x)
    isum = q.reshape(n, ng, 16).astype(np.int32).sum(-1)
    s = (d * isum.astype(np.float32)).astype(np.float32)
    for t in ts:
        p = lib.prepare(t, x)
        assert p.buf.nbytes == n * ld, t
        rows = p.buf.reshape(n, ld)
        np.testing.assert_array_equal(rows[:, :k].view(np.int8), q, err_msg=t.name)
        np.testing.assert_array_equal(rows[:, k:k + 4 * ng].copy().view(np.float32), d, err_msg=t.name)
        np.testing.assert_array_equal(rows[:, k + 4 * ng:k + 8 * ng].copy().view(np.float32), s, err_msg=t.name)
        np.testing.assert_array_equal(rows[:, k + 8 * ng:used].copy().view(np.int16), isum, err_msg=t.name)
        assert not rows[:, used:].any(), t
        np.testing.assert_array_equal(rows[2, 0:9].view(np.int8), [-127, 3, 4, -3, 1, -1, 127, -127, 2])
        assert not rows[1, 256:512].any() and not rows[1, k + 4 * 16:k + 4 * 32].any()  # zero groups: q = 0, d = 0
        assert rows[3, 40] == 0


def check_matches_reference(lib, t: GGMLType, shape: tuple[int, int, int], make) -> None:
    """One (m, k, n) product of type t (`make` as `make` here) against the float64 reference."""
    need(lib, t)
    m, k, n = shape
    raw, x = make(t, m, k, n, seed=m * 1000 + k + n + int(t))
    y = lib.gemm(t, raw, k, lib.prepare(t, x))
    ref, scale = reference(t, raw, k, x)
    check_close(y, ref, scale)


def check_threads_bit_identical(lib, t: GGMLType, make) -> None:
    """The same bits on 1, 2, 3 and 7 threads, for a batch and for one token (`make` as `make` here)."""
    need(lib, t)
    k = 512
    for m, n in [(301, 37), (513, 1)]:
        raw, x = make(t, m, k, n, seed=m + n)
        p = lib.prepare(t, x)
        y1 = lib.gemm(t, raw, k, p, n_threads=1)
        for nth in (2, 3, 7):
            assert np.array_equal(y1, lib.gemm(t, raw, k, p, n_threads=nth)), (m, n, nth)


def check_batch_independent(lib, t: GGMLType, k: int, make) -> None:
    """A token's outputs are the same bits alone (gemv), in a batch of at most one register tile and in a
    large batch: kernels take different paths there (neon: decode on the fly vs a panel decoded once into
    scratch), which must not change the arithmetic (kquants.h: results depend only on k)."""
    need(lib, t)
    m, n = 23, 19
    raw, x = make(t, m, k, n, seed=77 + int(t))
    big = lib.gemm(t, raw, k, lib.prepare(t, x))
    ref, scale = reference(t, raw, k, x)
    check_close(big, ref, scale)
    for j0, j1 in [(0, 1), (5, 6), (18, 19), (3, 7), (8, 14), (1, 18)]:
        y = lib.gemm(t, raw, k, lib.prepare(t, x[j0:j1]))
        assert np.array_equal(y, big[j0:j1]), (j0, j1)


@pytest.mark.parametrize("t", NEW_TYPES, ids=lambda t: t.name)
def test_threads_bit_identical(lib, t):
    check_threads_bit_identical(lib, t, make)


@pytest.mark.parametrize("t", NEW_TYPES, ids=lambda t: t.name)
def test_token_result_independent_of_batch(lib, t):
    check_batch_independent(lib, t, 160 if t == T.Q5_0 else 768, make)


def test_q5_0_shares_prepared_with_q4_0_and_q8_0(lib):
    """q5_0 takes the q8_0 activations: one Prepared serves q4_0, q8_0 and q5_0 weights."""
    need(lib, T.Q5_0)
    rng = np.random.default_rng(9)
    k, n = 256, 6
    x = rng.standard_normal((n, k)).astype(np.float32)
    raw5, _ = make(T.Q5_0, 11, k, n, seed=3)
    ref, scale = reference(T.Q5_0, raw5, k, x)
    for src in (T.Q4_0, T.Q8_0, T.Q5_0):
        if lib.supports(src) and lib.act_type(src) == T.Q8_0:
            check_close(lib.gemm(T.Q5_0, raw5, k, lib.prepare(src, x)), ref, scale)


def test_kquants_share_prepared(lib):
    if not all(lib.supports(t) for t in KTYPES):
        pytest.skip("not every K-quant here")
    rng = np.random.default_rng(4)
    k, n = 512, 9
    x = rng.standard_normal((n, k)).astype(np.float32)
    p = lib.prepare(T.Q6_K, x)
    for t in KTYPES:
        raw, _ = make(t, 21, k, n, seed=int(t))
        ref, scale = reference(t, raw, k, x)
        check_close(lib.gemm(t, raw, k, p), ref, scale)


def test_strided_rows_and_k_checks(lib):
    need(lib, T.Q4_K)
    rng = np.random.default_rng(2)
    raw = make_weights(T.Q4_K, 20, 512, rng)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    sub = raw[::2]  # strided rows
    ref, scale = reference(T.Q4_K, np.ascontiguousarray(sub), 512, x)
    check_close(lib.gemm(T.Q4_K, sub, 512, lib.prepare(T.Q4_K, x)), ref, scale)
    from tilellm.errors import ShapeError
    with pytest.raises(ShapeError, match="multiple"):
        lib.prepare(T.Q4_K, np.zeros((1, 320), np.float32))


# ---- model level: llama2-micro-q4_k_m (Q4_K, Q6_K, Q5_0, Q8_0 tensors) ------------------------------
# llama.cpp vs hfdq on this file, whole vocabulary, every prompt position of the 4 prompts
# (fixture README / compare.json "lcpp_vs_hfdq"): token-weighted mean and max |Δlogit|.
LLAMA_CPP_Q4_K_M = (0.2043, 0.02947)


def _llama_logits(be: str, ids) -> np.ndarray:
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.llama import LlamaModel

    f = open_gguf(fixture_path("llama2-micro-q4_k_m.gguf"))
    m = LlamaModel(f, backends.get(be, n_threads=2), n_ctx=256, n_batch=512, type_k="f32", type_v="f32")
    return m.eval(ids, logits_all=True)


@pytest.fixture(scope="module")
def q4km():
    ref = np.load(fixture_path("llama2-micro-q4_k_m.npz"))
    ids = [ref[f"token_ids_p{i}"] for i in range(4)]
    want = [_llama_logits("reference", x) for x in ids]
    # the reference backend reproduces hfdq (test_model_llama pins this for the other types)
    for i in range(4):
        top = ref[f"hfdq_top32_ids_p{i}"]
        np.testing.assert_allclose(np.take_along_axis(want[i], top, -1), ref[f"hfdq_top32_logits_p{i}"],
                                   atol=1e-4, rtol=0)
    return ids, want


@pytest.mark.parametrize("be", kernel_backends())
def test_q4_k_m_model_as_close_as_llama_cpp(be, q4km):
    ids, want = q4km
    mx, tot, cnt = 0.0, 0.0, 0
    for x, w in zip(ids, want):
        d = np.abs(_llama_logits(be, x) - w)
        mx, tot, cnt = max(mx, float(d.max())), tot + float(d.sum(dtype=np.float64)), cnt + d.size
    mean = tot / cnt
    lmx, lmean = LLAMA_CPP_Q4_K_M
    assert mean > 0  # activations really are quantized: not silently the float reference
    assert mean <= lmean, f"{be}: mean |Δ| {mean:.4g} > llama.cpp's {lmean:.4g}"
    assert mx <= 2 * lmx, f"{be}: max |Δ| {mx:.3g} > 2 x llama.cpp's {lmx:.3g}"


def _extreme_weights(t: GGMLType, m: int, k: int, rng) -> np.ndarray:
    """Every quant at its largest unsigned value (q5_0 31, q4_K 15, q5_K 31, q6_K 63) with the largest
    scales, in rows alternating with random bytes: the widest integer sums a kernel can meet (a SIMD
    kernel that sums too many vpmaddubsw steps in int16 saturates here and fails the comparison)."""
    raw = make_weights(t, m, k, rng).copy()
    ts = TYPE_INFO[t].type_size
    blocks = raw.reshape(m, -1, ts)
    ext = blocks[::2]
    if t == T.Q5_0:
        ext[..., 2:] = 0xFF  # qh all set, every nibble 15: q = 31
    elif t == T.Q6_K:
        ext[..., :192] = 0xFF  # ql, qh: q = 63
        ext[..., 192:208] = 0x7F  # scales 127
    else:
        ext[..., 4:] = 0xFF  # scales/mins 63, (q5_K qh), nibbles 15
    return raw


def check_extreme_quants(lib, t: GGMLType, n: int, extreme_weights) -> None:
    """`extreme_weights(t, m, k, rng)` (every quant at its largest magnitude) against activations of constant |x|
    within a row (every activation quant +-127; row 0 all positive): no int16 sum may saturate."""
    need(lib, t)
    rng = np.random.default_rng(11 + n)
    m, k = 19, 512
    raw = extreme_weights(t, m, k, rng)
    x = (rng.choice([-1.0, 1.0], size=(n, k)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
    x[0] = abs(x[0])
    y = lib.gemm(t, raw, k, lib.prepare(t, x))
    ref, scale = reference(t, raw, k, x)
    check_close(y, ref, scale)


@pytest.mark.parametrize("t", NEW_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 5])
def test_extreme_quants_no_int16_saturation(lib, t, n):
    check_extreme_quants(lib, t, n, _extreme_weights)


@pytest.mark.parametrize("t", NEW_TYPES, ids=lambda t: t.name)
def test_avx2_bit_identical_to_avx512(t):
    """avx2_kquants.c does the avx512 kernels' arithmetic (exact int32 per group, the same f32 ops in
    the same order), so the two variants agree bit for bit, for the gemv and the panel path."""
    if not {"avx2", "avx512"} <= set(RUNNABLE):
        pytest.skip("needs both avx2 and avx512")
    a2, a5 = kernels.load("avx2"), kernels.load("avx512")
    k = 256 if t == T.Q5_0 else 1024
    for m, n in [(37, 1), (37, 9), (300, 1), (20, 70)]:
        raw, x = make(t, m, k, n, seed=m + n)
        assert np.array_equal(a2.gemm(t, raw, k, a2.prepare(t, x)), a5.gemm(t, raw, k, a5.prepare(t, x))), (m, n)


@pytest.mark.parametrize("t", [T.Q8_0, T.Q4_0, T.Q4_1, *NEW_TYPES], ids=lambda t: t.name)
def test_avxvnni_bit_identical_to_avx2(t):
    """The avxvnni variant is avx2's integer kernels with the group dots on vpdpbusd: the same exact int32
    dots and f32 operations, so the same bits, for the gemv, the panel path and ragged shapes."""
    if not {"avx2", "avxvnni"} <= set(RUNNABLE):
        pytest.skip("needs both avx2 and avxvnni")
    a2, av = kernels.load("avx2"), kernels.load("avxvnni")
    k = 256 if t == T.Q5_0 else 1024
    for m, n in [(37, 1), (37, 9), (300, 1), (20, 70), (8, 1), (9, 3)]:
        if t in (T.Q8_0, T.Q4_0, T.Q4_1):
            rng = np.random.default_rng(m + n)
            w = (rng.standard_normal((m, k)) * rng.uniform(0.1, 3.0, size=(m, 1))).astype(np.float32)
            raw, x = quantize(w, t), rng.standard_normal((n, k)).astype(np.float32)
        else:
            raw, x = make(t, m, k, n, seed=m + n)
        y2, yv = a2.gemm(t, raw, k, a2.prepare(t, x)), av.gemm(t, raw, k, av.prepare(t, x))
        assert np.array_equal(y2, yv), (m, n)
        check_close(yv, *reference(t, raw, k, x))


# ---- ggml activation rounding (kernels.load(..., act_rounding="ggml")) ------------------------

def ggml_act_ref(x: np.ndarray, span: int) -> np.ndarray:
    """float64 values of the activations in ggml mode: d = amax/127 over `span` values (32, or 256
    for the K-quants), q = roundf(x/d) via x * (1/d), clamped to +-127; span 32 keeps d in fp16."""
    n, k = x.shape
    b = x.reshape(n, k // span, span)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (b * inv).astype(np.float32).astype(np.float64)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127)
    if span == 32:  # ggml's q8_0 / q8_1 blocks store d as fp16 (the quants use the f32 d)
        d = d.astype(np.float16).astype(np.float32)
    return (q * d.astype(np.float64)).reshape(n, k)


@pytest.mark.parametrize("t", [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, *KTYPES], ids=lambda t: t.name)
def test_ggml_act_rounding(lib, t):
    """In ggml mode every variant quantizes activations with one scale per 32 values (per 256 for the
    K-quants) — and the result must NOT also match the default per-16 rounding at this tolerance."""
    need(lib, t)
    lib = kernels.load(lib.variant, n_threads=2, act_rounding="ggml")
    span = 256 if t in KTYPES else 32
    for m, k, n in [(5, 256, 1), (17, 512, 3), (33, 768, 9), (3, 256, 40)]:
        rng = np.random.default_rng(m + k + n)
        raw = make_weights(t, m, k, rng) if t not in (T.Q8_0, T.Q4_0, T.Q4_1) else quantize(
            rng.standard_normal((m, k)).astype(np.float32), t)
        x = (rng.standard_normal((n, k)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
        x[:, 5] *= 20  # an outlier: per-16 and per-32/256 scales then differ clearly
        y = lib.gemm(t, raw, k, lib.prepare(t, x))
        wd = dequantize(raw, t, k).astype(np.float64).reshape(-1, k)
        xd = ggml_act_ref(x, span)
        check_close(y, xd @ wd.T, np.abs(xd) @ np.abs(wd).T)
        fine = q8_act_ref(x)
        with pytest.raises(AssertionError):
            check_close(y, fine @ wd.T, np.abs(fine) @ np.abs(wd).T)


def test_act_rounding_and_options_are_validated():
    assert kernels.load("portable").act_rounding == "fine"
    with pytest.raises(ValueError, match="act_rounding"):
        kernels.load("portable", act_rounding="bf16")
    with pytest.raises(ValueError, match="q8_gemv"):
        kernels.load("portable", q8_gemv="fast")
    with pytest.raises(ValueError, match="bf16_exact"):
        kernels.load("portable", bf16_exact=1)
    with pytest.raises(TypeError, match="unknown kernel option"):
        kernels.load("portable", fast=True)


def test_act_rounding_is_per_library(lib):
    """Two libraries of one variant with different act_rounding, used interleaved (prepare with one, then the
    other, gemm in alternation, each on several threads), give exactly what each gives alone: the rounding mode
    belongs to the library's C context, not to the process."""
    ts = [t for t in (T.Q8_0, T.Q4_1, T.Q4_K) if lib.supports(t)]
    if not ts:
        pytest.skip(f"{lib.variant} has no quantized kernels")
    rng = np.random.default_rng(3)
    cases = []
    for t in ts:
        k = 512
        raw = (make_weights(t, 40, k, rng) if t in KTYPES
               else quantize(rng.standard_normal((40, k)).astype(np.float32), t))
        x = rng.standard_normal((5, k)).astype(np.float32)
        x[:, 7] *= 30  # per-16 and per-32/256 scales differ clearly
        cases.append((t, raw, k, x))

    def run(lb, t, raw, k, x):
        return [lb.gemm(t, raw, k, lb.prepare(t, x[:1])), lb.gemm(t, raw, k, lb.prepare(t, x))]

    alone = {}
    for mode in ("fine", "ggml"):
        lb = kernels.load(lib.variant, n_threads=2, act_rounding=mode)
        alone[mode] = [run(lb, *c) for c in cases]
        del lb
    fine = kernels.load(lib.variant, n_threads=2)
    ggml = kernels.load(lib.variant, n_threads=2, act_rounding="ggml")
    for i, (t, raw, k, x) in enumerate(cases):
        pf, pg = fine.prepare(t, x), ggml.prepare(t, x)  # prepared in turn, before either multiplies
        got = {"ggml": [ggml.gemm(t, raw, k, ggml.prepare(t, x[:1]))],
               "fine": [fine.gemm(t, raw, k, fine.prepare(t, x[:1]))]}
        got["ggml"].append(ggml.gemm(t, raw, k, pg))
        got["fine"].append(fine.gemm(t, raw, k, pf))
        for mode in ("fine", "ggml"):
            for a, b in zip(got[mode], alone[mode][i]):
                assert np.array_equal(a, b), (t.name, mode)
        assert not np.array_equal(got["fine"][1], got["ggml"][1]), t.name  # the modes do differ here
