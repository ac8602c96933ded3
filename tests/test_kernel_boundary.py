"""The Python -> C boundary: bad input must become a documented error, never reach C.

C trusts what it is given (kernels/include/tilellm.h), so everything here is an attempt to get
something past the validation of tilellm.kernels (KernelLib.prepare / gemm / fma_peak, load)
and tilellm.kernels.attention: wrong dtypes, shapes, strides, byte ranges, thread counts, type
ids, tampered or foreign Prepared objects. Each must raise ShapeError (UnsupportedError for
types, BackendUnavailableError for variants). The second half checks that C stays inside the
buffers it is handed for edge shapes: exact-size buffers (ASan in .ci/sanitize.sh sees every
instrumented over-read) and buffers that end at, or start right after, an inaccessible page
(which also catches reads ASan cannot see, e.g. from gathers or masked loads).
"""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# the exact reference (kept in step with the activation layout) and the kernel types and variants
from test_kernels import QTYPES, RUNNABLE, TYPES, T, reference

from tilellm import kernels
from tilellm.backend.ops import causal_attention
from tilellm.errors import BackendUnavailableError, NumericalError, ShapeError, TileLLMError, UnsupportedError
from tilellm.kernels.attention import attention
from tilellm.quant import TYPE_INFO, GGMLType, quantize


@pytest.fixture(scope="module", params=RUNNABLE)
def lib(request):
    return kernels.load(request.param, n_threads=2)


def weights(t: GGMLType, m: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return quantize(rng.standard_normal((m, k)).astype(np.float32), t)


def acts(n: int, k: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def expect(exc: type[Exception], case: str, fn) -> None:
    """fn() must raise exc; any other outcome fails naming the case (loops over many bad inputs)."""
    try:
        fn()
    except exc:
        return
    except Exception as e:  # noqa: BLE001 - reported as the failure
        pytest.fail(f"{case}: raised {type(e).__name__}: {e} instead of {exc.__name__}")
    pytest.fail(f"{case}: accepted, expected {exc.__name__}")


def beyond_buffer(a: np.ndarray, shape, strides) -> np.ndarray:
    """A view over a's memory that reaches past its end (what as_strided lets anyone build)."""
    return np.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


# ---- prepare ----------------------------------------------------------------------------------

BAD_X = {
    "float64": lambda: np.zeros((2, 32), np.float64),
    "float16": lambda: np.zeros((2, 32), np.float16),
    "int32": lambda: np.zeros((2, 32), np.int32),
    "big-endian f32": lambda: np.zeros((2, 32), ">f4"),
    "complex64": lambda: np.zeros((2, 32), np.complex64),
    "object": lambda: np.zeros((2, 32), object),
    "1-D": lambda: np.zeros(32, np.float32),
    "3-D": lambda: np.zeros((1, 2, 32), np.float32),
    "no rows": lambda: np.zeros((0, 32), np.float32),
    "no columns": lambda: np.zeros((2, 0), np.float32),
    "fortran": lambda: np.asfortranarray(acts(3, 32)),
    "negative row stride": lambda: acts(3, 32)[::-1],
    "negative column stride": lambda: acts(3, 32)[:, ::-1],
    "strided columns": lambda: acts(3, 64)[:, ::2],
    "overlapping rows": lambda: beyond_buffer(acts(3, 32), (3, 32), (4, 4)),
    "broadcast rows": lambda: np.broadcast_to(acts(1, 32), (4, 32)),
    "unaligned": lambda: np.zeros(2 * 32 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(2, 32),
    "rows past the buffer": lambda: beyond_buffer(acts(2, 32), (64, 32), (128, 4)),
    "list": lambda: [[0.0] * 32] * 2,
    "memoryview": lambda: memoryview(acts(2, 32)),
}


@pytest.mark.parametrize("case", list(BAD_X), ids=str)
def test_prepare_rejects_bad_activations(lib, case):
    x = BAD_X[case]()
    for t in (T.F32, T.Q8_0):
        expect(ShapeError, f"{case} for {t.name}", lambda: lib.prepare(t, x))


def test_prepare_rejects_k_not_a_block_multiple(lib):
    for t in QTYPES:
        for k in (1, 16, 31, 33, 48):
            with pytest.raises(ShapeError, match="block size"):
                lib.prepare(t, acts(2, k))


NOT_TYPE_IDS = [12345, -1, 2**40, "q9_9", "", None, 2.5, object(), b"q8_0"]


@pytest.mark.parametrize("t", NOT_TYPE_IDS, ids=repr)
def test_values_that_are_not_type_ids(lib, t):
    assert lib.supports(t) is False
    with pytest.raises(UnsupportedError):
        lib.prepare(t, acts(1, 256))
    with pytest.raises(UnsupportedError):
        lib.act_type(t)
    with pytest.raises(UnsupportedError):
        lib.gemm(t, np.zeros((1, 34 * 8), np.uint8), 256, lib.prepare(T.Q8_0, acts(1, 256)))


def test_types_without_a_kernel_here(lib):
    """Valid GGML types this variant has no kernel for (the set shrinks as kernels are added),
    in every spelling: UnsupportedError, never a call into C with an id it does not handle."""
    missing = [t for t in GGMLType if not lib.supports(t)]
    if not missing:
        pytest.skip(f"{lib.variant} has a kernel for every GGML type")
    p = lib.prepare(T.Q8_0, acts(1, 256))
    for t in missing:
        for spelling in (t, int(t), t.name.lower(), np.int32(t)):
            assert not lib.supports(spelling)
            expect(UnsupportedError, f"prepare {spelling!r}", lambda: lib.prepare(spelling, acts(1, 256)))
            expect(UnsupportedError, f"act_type {spelling!r}", lambda: lib.act_type(spelling))
            expect(UnsupportedError, f"gemm {spelling!r}",
                   lambda: lib.gemm(spelling, np.zeros((1, 34 * 8), np.uint8), 256, p))


def test_type_ids_equal_to_valid_ones_are_still_rejected(lib):
    """True == 1 (F16) and 8.0 == 8 (Q8_0) hash alike: after the valid ids were used (and maybe
    cached), the look-alikes must still be refused, not served as F16 / Q8_0."""
    x = acts(1, 32)
    for good, fakes in ((T.F16, (True, 1.0, np.float32(1.0), np.True_)), (T.Q8_0, (8.0, np.float64(8.0)))):
        lib.gemm(good, weights(good, 2, 32), 32, lib.prepare(good, x))
        assert lib.supports(good) and lib.supports(int(good))
        for fake in fakes:
            assert lib.supports(fake) is False, repr(fake)
            with pytest.raises(UnsupportedError):
                lib.prepare(fake, x)
            with pytest.raises(UnsupportedError):
                lib.gemm(fake, weights(good, 2, 32), 32, lib.prepare(good, x))


BAD_THREADS = [0, -1, -2**31, 10**6, 2**31, 2**63, 2**100, True, 1.5, "2", np.float64(2)]


@pytest.mark.parametrize("nth", BAD_THREADS, ids=repr)
def test_bad_thread_counts(lib, nth):
    x = acts(2, 32)
    raw = weights(T.Q8_0, 3, 32)
    p = lib.prepare(T.Q8_0, x)
    with pytest.raises(ShapeError, match="n_threads"):
        lib.prepare(T.Q8_0, x, n_threads=nth)
    with pytest.raises(ShapeError, match="n_threads"):
        lib.gemm(T.Q8_0, raw, 32, p, n_threads=nth)
    with pytest.raises(ShapeError, match="n_threads"):
        lib.fma_peak(n_threads=nth)
    with pytest.raises(ShapeError, match="n_threads"):
        kernels.load(lib.variant, n_threads=nth)


def test_load_rejects_unknown_variants():
    for v in ("", "AVX2 ", "avx3", "../portable", None, 3, b"portable"):
        with pytest.raises(BackendUnavailableError):
            kernels.load(v)


# ---- gemm: weights ------------------------------------------------------------------------------

@pytest.fixture
def q8(lib):
    m, k, n = 5, 64, 3
    return weights(T.Q8_0, m, k), lib.prepare(T.Q8_0, acts(n, k)), m, k, n


def test_gemm_rejects_bad_weights(lib, q8):
    raw, p, m, k, n = q8
    rb = raw.shape[1]
    wide = np.zeros((m, 2 * rb), np.uint8)
    bad = {
        "int8": raw.view(np.int8),
        "uint16": np.zeros((m, rb // 2), np.uint16),
        "float32": np.zeros((m, rb // 2), np.float32),
        "1-D": raw.reshape(-1),
        "3-D": raw.reshape(1, m, rb),
        "no rows": raw[:0],
        "rows one byte short": raw[:, :-1],
        "rows one byte long": np.zeros((m, rb + 1), np.uint8),
        "whole buffer short of m*row_bytes": np.zeros(m * rb - 1, np.uint8)[: (m - 1) * rb].reshape(m - 1, rb)[:, :-1],
        "fortran": np.asfortranarray(raw),
        "negative row stride": raw[::-1],
        "negative byte stride": raw[:, ::-1],
        "strided bytes": wide[:, ::2],
        "overlapping rows": beyond_buffer(raw, (m, rb), (1, 1)),
        "broadcast rows": np.broadcast_to(raw[:1], (m, rb)),
        "rows past the buffer": beyond_buffer(raw, (4 * m, rb), (rb, 1)),
        "row stride past the buffer": beyond_buffer(raw, (m, rb), (4 * rb, 1)),
        "bytes object": raw.tobytes(),
        "list": raw.tolist(),
    }
    for name, w in bad.items():
        expect(ShapeError, name, lambda: lib.gemm(T.Q8_0, w, k, p))


def test_gemm_rejects_bad_k(lib, q8):
    raw, p, m, k, n = q8
    for bad in (0, -32, 32, 96, 48, 2**62, 2**64 + 64, 64.0, "64", None, True, np.float32(64)):
        expect(ShapeError, f"k={bad!r}", lambda: lib.gemm(T.Q8_0, raw, bad, p))


def test_f32_weights_must_be_aligned(lib):
    """f32 rows are read as floats: an odd address is rejected, not handed to C."""
    m, k = 3, 8
    raw = weights(T.F32, m, k)
    buf = np.zeros(raw.nbytes + 1, np.uint8)
    odd = buf[1:].reshape(m, raw.shape[1])
    odd[:] = raw
    with pytest.raises(ShapeError, match="aligned"):
        lib.gemm(T.F32, odd, k, lib.prepare(T.F32, acts(2, k)))


def test_mismatched_type_ids(lib):
    """Activations prepared for one type family cannot feed another; weights of another type
    with a different row size are caught by the row size."""
    k = 64
    x = acts(2, k)
    p_f = lib.prepare(T.F32, x)
    p_q8 = lib.prepare(T.Q8_0, x)
    p_q41 = lib.prepare(T.Q4_1, x)
    for t in QTYPES:
        with pytest.raises(ShapeError, match="activations"):
            lib.gemm(t, weights(t, 3, k), k, p_f)
    for t in (T.F32, T.F16, T.BF16):
        with pytest.raises(ShapeError, match="activations"):
            lib.gemm(t, weights(t, 3, k), k, p_q8)
    if lib.act_type(T.Q4_1) != lib.act_type(T.Q8_0):
        with pytest.raises(ShapeError, match="activations"):
            lib.gemm(T.Q4_1, weights(T.Q4_1, 3, k), k, p_q8)
        with pytest.raises(ShapeError, match="activations"):
            lib.gemm(T.Q8_0, weights(T.Q8_0, 3, k), k, p_q41)
    # q4_0 bytes labelled q8_0 (and the reverse): the row sizes differ
    with pytest.raises(ShapeError, match="bytes"):
        lib.gemm(T.Q8_0, weights(T.Q4_0, 3, k), k, p_q8)
    with pytest.raises(ShapeError, match="bytes"):
        lib.gemm(T.Q4_0, weights(T.Q8_0, 3, k), k, p_q8)


# ---- gemm: Prepared -------------------------------------------------------------------------------

def test_prepared_from_another_variant(lib):
    others = [v for v in RUNNABLE if v != lib.variant]
    if not others:
        pytest.skip("only one kernel variant runs here")
    k = 64
    raw = weights(T.Q8_0, 4, k)
    for v in others:
        p = kernels.load(v).prepare(T.Q8_0, acts(2, k))
        with pytest.raises(ShapeError, match="variant"):
            lib.gemm(T.Q8_0, raw, k, p)


def test_prepared_with_another_k(lib):
    for t in TYPES:
        bs = TYPE_INFO[t].block_size
        k = 64
        p = lib.prepare(t, acts(2, k + (32 if bs > 1 else 1)))
        with pytest.raises(ShapeError, match="k ="):
            lib.gemm(t, weights(t, 3, k), k, p)


def test_not_a_prepared(lib, q8):
    raw, p, m, k, n = q8
    for bad in (None, acts(3, k), p.buf, {"buf": p.buf}):
        with pytest.raises(ShapeError, match="prepare"):
            lib.gemm(T.Q8_0, raw, k, bad)


def tampered(lib, field: str, value):
    """A fresh Q8_0 Prepared (n=3, k=64) with one attribute overwritten."""
    p = lib.prepare(T.Q8_0, acts(3, 64))
    setattr(p, field, value(p) if callable(value) else value)
    return p


def _realigned(p, shift: int) -> np.ndarray:
    raw = np.zeros(p.buf.nbytes + 128, np.uint8)
    off = (-raw.ctypes.data) % 64 + shift
    b = raw[off:off + p.buf.nbytes]
    b[:] = p.buf
    return b


TAMPER = {
    "shorter buffer": ("buf", lambda p: p.buf[:-1].copy()),
    "longer buffer": ("buf", lambda p: np.zeros(p.buf.nbytes + 64, np.uint8)),
    "misaligned buffer": ("buf", lambda p: _realigned(p, 4)),
    "strided buffer": ("buf", lambda p: np.zeros(2 * p.buf.nbytes, np.uint8)[::2]),
    "float32 buffer": ("buf", lambda p: p.buf.view(np.float32)),
    "2-D buffer": ("buf", lambda p: p.buf.reshape(-1, 64)),
    "list buffer": ("buf", lambda p: p.buf.tolist()),
    "buffer past its memory": ("buf", lambda p: beyond_buffer(p.buf[:64], p.buf.shape, (1,))),
    "more rows": ("n", 4),
    "zero rows": ("n", 0),
    "negative rows": ("n", -3),
    "float rows": ("n", 3.0),
    "other k": ("k", 32),
    "other variant": ("variant", "nonexistent"),
    "other act type": ("act_type", T.F32),
}


@pytest.mark.parametrize("case", list(TAMPER), ids=str)
def test_tampered_prepared(lib, case):
    field, value = TAMPER[case]
    p = tampered(lib, field, value)
    with pytest.raises(ShapeError):
        lib.gemm(T.Q8_0, weights(T.Q8_0, 4, 64), 64, p)


def test_correct_buffer_realigned_by_64_still_works(lib):
    """The checks are about what C needs, not object identity: a 64-byte aligned copy is fine."""
    k = 64
    raw = weights(T.Q8_0, 4, k)
    p = lib.prepare(T.Q8_0, acts(3, k))
    want = lib.gemm(T.Q8_0, raw, k, p)
    p.buf = _realigned(p, 0)
    np.testing.assert_array_equal(lib.gemm(T.Q8_0, raw, k, p), want)


# ---- gemm: out -------------------------------------------------------------------------------------

def test_gemm_rejects_bad_out(lib, q8):
    raw, p, m, k, n = q8
    ro = np.zeros((n, m), np.float32)
    ro.setflags(write=False)
    shared = np.zeros(raw.nbytes + 4 * n * m, np.uint8)
    alias_w = shared[:raw.nbytes].reshape(raw.shape)
    alias_w[:] = raw
    bad = {
        "float64": np.zeros((n, m)),
        "float16": np.zeros((n, m), np.float16),
        "transposed shape": np.zeros((m, n), np.float32),
        "flat": np.zeros(n * m, np.float32),
        "one short": np.zeros((n, m - 1), np.float32),
        "fortran": np.asfortranarray(np.zeros((n, m), np.float32)),
        "strided": np.zeros((n, 2 * m), np.float32)[:, ::2],
        "negative stride": np.zeros((n, m), np.float32)[::-1],
        "read-only": ro,
        "unaligned": np.zeros(4 * n * m + 1, np.uint8)[1:].view(np.float32).reshape(n, m),
        "past its buffer": beyond_buffer(np.zeros((1, m), np.float32), (n, m), (4 * m, 4)),
        "list": [[0.0] * m] * n,
    }
    for name, out in bad.items():
        expect(ShapeError, name, lambda: lib.gemm(T.Q8_0, raw, k, p, out=out))
    with pytest.raises(ShapeError, match="overlaps"):
        lib.gemm(T.Q8_0, alias_w, k, p, out=shared[:4 * n * m].view(np.float32).reshape(n, m))
    with pytest.raises(ShapeError, match="overlaps"):
        lib.gemm(T.Q8_0, raw, k, p, out=p.buf[:4 * n * m].view(np.float32).reshape(n, m))


def test_errors_are_documented_types(lib, q8):
    """Every rejection above is a TileLLMError (and ValueError), never a TypeError or cffi error."""
    raw, p, m, k, n = q8
    calls = [lambda: lib.gemm(T.Q8_0, raw, "k", p), lambda: lib.gemm(T.Q8_0, raw, k, p, out="y"),
             lambda: lib.prepare(T.Q8_0, "x"), lambda: lib.gemm(T.Q8_0, raw, k, p, n_threads=2**70)]
    for call in calls:
        with pytest.raises(TileLLMError) as ei:
            call()
        assert isinstance(ei.value, ValueError)


# ---- valid but unusual inputs must work (and match the plain ones) -------------------------------

def test_valid_unusual_layouts_match_contiguous(lib):
    m, k, n = 9, 64, 5
    for t in TYPES:
        raw, x = weights(t, m, k, seed=3), acts(n, k, seed=4)
        want = lib.gemm(t, raw, k, lib.prepare(t, x))
        # activations: every other row of a bigger array, read-only
        xb = np.zeros((2 * n, k), np.float32)
        xb[::2] = x
        xb.setflags(write=False)
        # weights: rows 3 apart inside a bigger read-only buffer, at an even (2-byte) offset
        rb = raw.shape[1]
        wb = np.zeros((3 * m, rb + 8), np.uint8)
        wb[::3, 4:4 + rb] = raw
        wb.setflags(write=False)
        got = lib.gemm(t, wb[::3, 4:4 + rb], k, lib.prepare(t, xb[::2]))
        np.testing.assert_array_equal(got, want)
        # one row: its (meaningless) row stride must not matter (n = m = 1 may take the gemv path,
        # so the reference is the contiguous single-row call, not a slice of want)
        one = lib.gemm(t, raw[2:3].copy(), k, lib.prepare(t, x[:1].copy()))
        np.testing.assert_array_equal(lib.gemm(t, raw[2:3], k, lib.prepare(t, x[::-1][4:5])), one)
        # odd byte offsets are fine for everything but f32 (f16/bf16/quant rows are 2-byte data)
        if t != T.F32:
            ob = np.zeros(m * rb + 1, np.uint8)
            odd = ob[1:].reshape(m, rb)
            odd[:] = raw
            np.testing.assert_array_equal(lib.gemm(t, odd, k, lib.prepare(t, x)), want)


def test_nonfinite_activations_do_not_trip_c(lib):
    """inf / nan / huge activations go through the q8 conversion (float->int casts) without UB; quantized weights
    refuse the non-finite rows (NumericalError, issue #14: int8 cannot hold them), float weights keep them."""
    k = 64
    x = np.array([[np.inf] * 32 + [1.0] * 32, [np.nan] * 32 + [-np.inf] * 32, [3e38] * 32 + [-3e38] * 32,
                  [1e-45] * 64], np.float32)
    for t in TYPES:
        if t in QTYPES:
            with pytest.raises(NumericalError, match=r"\[0, 0\] is inf"):
                lib.prepare(t, x)
            y = lib.gemm(t, weights(t, 3, k), k, lib.prepare(t, x[2:]))
            assert y.shape == (2, 3)
            assert np.isfinite(y[1]).all()
            continue
        y = lib.gemm(t, weights(t, 3, k), k, lib.prepare(t, x))
        assert y.shape == (4, 3)
        assert np.isfinite(y[3]).all()


# ---- attention --------------------------------------------------------------------------------------

def attn_inputs(T_=4, H=4, Hkv=2, D=8, n_past=2, seed=5):
    rng = np.random.default_rng(seed)
    S = n_past + T_
    return (rng.standard_normal((T_, H, D)).astype(np.float32), rng.standard_normal((S, Hkv, D)).astype(np.float32),
            rng.standard_normal((S, Hkv, D)).astype(np.float32), n_past)


def test_attention_rejects_bad_input(lib):
    q, k, v, n_past = attn_inputs()
    ro = np.zeros_like(q)
    ro.setflags(write=False)
    bad = [
        dict(q=q.astype(np.float64)), dict(k=k.astype(np.float64)), dict(k=k.astype(np.int16)),  # not a KV cache type
        dict(q=q.astype(np.float16)), dict(v=v.tolist()), dict(q=q[0]),
        dict(k=k[:, :1].repeat(3, axis=1)),                       # H % Hkv != 0
        dict(k=k[1:], v=v[1:]), dict(v=v[1:]), dict(n_past=-1), dict(n_past=2.0), dict(n_past="2"),
        dict(q=np.asfortranarray(q)), dict(q=q[::-1]), dict(k=k[:, ::-1]), dict(v=v[..., ::2].repeat(2, -1)[..., ::2]),
        dict(q=np.zeros(q.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(q.shape)),
        dict(k=beyond_buffer(k[:1], k.shape, (k.strides[0] * 4,) + k.strides[1:])),
        dict(out=np.zeros((4, 4, 8), np.float64)), dict(out=ro), dict(out=q), dict(out="out"),
        dict(out=np.zeros((4, 4, 16), np.float32)[..., ::2]),
        dict(n_threads=0), dict(n_threads=-1), dict(n_threads=10**6), dict(n_threads=2**70), dict(n_threads=1.5),
    ]
    for i, change in enumerate(bad):
        a = dict(q=q, k=k, v=v, n_past=n_past, n_threads=2, out=None) | change
        expect(ShapeError, f"case {i} ({', '.join(change)})", lambda: attention(
            lib, a["q"], a["k"], a["v"], a["n_past"], 0.35, n_threads=a["n_threads"], out=a["out"]))


def test_attention_strided_operands_match_numpy(lib):
    """q/k/v as row-strided views (e.g. slices of a fused qkv buffer): same result as contiguous."""
    q, k, v, n_past = attn_inputs(T_=5, H=4, Hkv=2, D=16, n_past=3)
    Tq, H, D = q.shape
    S, Hkv = k.shape[:2]
    fused = np.zeros((S, H * D + 2 * Hkv * D + 8), np.float32)
    qv = fused[n_past:, :H * D].reshape(Tq, H, D)
    kv = fused[:, H * D:H * D + Hkv * D].reshape(S, Hkv, D)
    vv = fused[:, H * D + Hkv * D:H * D + 2 * Hkv * D].reshape(S, Hkv, D)
    qv[:], kv[:], vv[:] = q, k, v
    assert not qv.flags.c_contiguous and not kv.flags.c_contiguous
    want = causal_attention(q, k, v, n_past, 0.25)
    got = attention(lib, qv, kv, vv, n_past, 0.25, n_threads=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, attention(lib, q, k, v, n_past, 0.25, n_threads=2))


# ---- C stays inside its buffers for edge shapes ------------------------------------------------------

EDGE_M = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33]
EDGE_N = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13]


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_edge_shapes_exact_buffers(lib, t):
    """m and n around every tile size, k = one block (and an odd block count / odd float k):
    every buffer is a fresh exact-size allocation, so an over-read or over-write is an ASan
    report in the sanitizer run; results must match the float64 reference."""
    bs = TYPE_INFO[t].block_size
    for k in ((bs, 3 * bs) if bs > 1 else (1, 7, 17)):
        wmax = weights(t, max(EDGE_M), k, seed=k)
        xmax = acts(max(EDGE_N), k, seed=k + 1)
        for m in EDGE_M:
            for n in EDGE_N:
                w, x = wmax[:m].copy(), xmax[:n].copy()
                y = lib.gemm(t, w, k, lib.prepare(t, x))
                ref, scale = reference(lib, t, w, k, x)
                assert (np.abs(y - ref) <= 1e-5 * scale + 1e-30).all(), (t.name, m, n, k)


GUARD_CHILD = textwrap.dedent(r"""
    import ctypes, mmap, sys
    import numpy as np
    from tilellm import kernels
    from tilellm.kernels.attention import attention
    from tilellm.quant import TYPE_INFO, GGMLType as T, quantize

    PAGE = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    keep = []

    def fenced(nbytes, at_end):
        # nbytes of writable memory that end at (or start right after) a PROT_NONE page
        pages = (nbytes + PAGE - 1) // PAGE + 2
        mm = mmap.mmap(-1, pages * PAGE)
        keep.append(mm)
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        whole = np.frombuffer(mm, np.uint8)
        if at_end:  # (every size here is a multiple of its element size, so the start stays aligned)
            guard = (pages - 1) * PAGE
            assert libc.mprotect(base + guard, PAGE, 0) == 0
            return whole[guard - nbytes:guard]
        assert libc.mprotect(base, PAGE, 0) == 0
        return whole[PAGE:PAGE + nbytes]

    lib = kernels.load(sys.argv[1], n_threads=2)
    for t in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1):
        bs = TYPE_INFO[t].block_size
        for k in ((bs, 2 * bs, 5 * bs) if bs > 1 else (1, 3, 16, 17, 33)):
            for m, n in ((1, 1), (1, 5), (3, 1), (7, 2), (17, 3), (33, 9), (8, 4), (16, 6)):
                rng = np.random.default_rng(m * 100 + n + k)
                raw = quantize(rng.standard_normal((m, k)).astype(np.float32), t)
                x = rng.standard_normal((n, k)).astype(np.float32)
                want = lib.gemm(t, raw, k, lib.prepare(t, x))
                for at_end in (True, False):
                    print(t.name, "k", k, "m", m, "n", n, "end" if at_end else "start", flush=True)
                    w = fenced(raw.nbytes, at_end).reshape(raw.shape)
                    w[:] = raw
                    xf = fenced(x.nbytes, at_end).view(np.float32).reshape(x.shape)
                    xf[:] = x
                    out = fenced(4 * n * m, at_end).view(np.float32).reshape(n, m)
                    got = lib.gemm(t, w, k, lib.prepare(t, xf), out=out)
                    if not np.array_equal(got, want):
                        sys.exit(f"different result with fenced buffers: {t.name} k={k} m={m} n={n}")
    for (Tq, H, Hkv, D, past) in ((1, 1, 1, 1, 0), (3, 4, 2, 5, 2), (9, 2, 1, 16, 0), (1, 8, 8, 64, 7)):
        S = past + Tq
        rng = np.random.default_rng(D)
        q0, k0, v0 = (rng.standard_normal(s).astype(np.float32) for s in ((Tq, H, D), (S, Hkv, D), (S, Hkv, D)))
        want = attention(lib, q0, k0, v0, past, 0.3, n_threads=2)
        for at_end in (True, False):
            print("attention", Tq, H, Hkv, D, past, "end" if at_end else "start", flush=True)
            ops = []
            for a in (q0, k0, v0):
                f = fenced(a.nbytes, at_end).view(np.float32).reshape(a.shape)
                f[:] = a
                ops.append(f)
            out = fenced(q0.nbytes, at_end).view(np.float32).reshape(q0.shape)
            if not np.array_equal(attention(lib, *ops, past, 0.3, n_threads=2, out=out), want):
                sys.exit(f"different attention result with fenced buffers: {(Tq, H, Hkv, D, past)}")
    print("ok", flush=True)
""")


@pytest.mark.skipif(not hasattr(mmap, "PAGESIZE") or sys.platform == "win32", reason="needs mmap + mprotect")
@pytest.mark.parametrize("variant", RUNNABLE)
def test_guard_pages(variant):
    """Every buffer (weights, activations, output; attention q/k/v/out) ends exactly at an
    inaccessible page, then starts right after one: one byte read or written outside it is a
    SIGSEGV. Run in a child process so a fault is a test failure naming the case."""
    r = subprocess.run([sys.executable, "-c", GUARD_CHILD, variant], capture_output=True, text=True, timeout=600,
                       env=os.environ | {"OMP_NUM_THREADS": "1"})
    last = r.stdout.strip().splitlines()[-1:] or ["(nothing)"]
    assert r.returncode == 0 and last == ["ok"], (
        f"{variant}: exit status {r.returncode} after case {last[0]!r}\n{r.stderr[-4000:]}")
