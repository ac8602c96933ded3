"""Kernel variants against numpy references, plus the Python-side argument validation.

Every compiled variant this CPU can run is tested (new variants are picked up automatically).
Quantized references are exact re-computations: weights dequantized by tilellm.quant,
activations quantized with ggml's reference rounding (d = amax/127, q = roundf(x/d) via
x * (1/d)) but one f32 scale per 16 values as the kernels keep (tl_internal.h), everything
summed in float64.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest

from tilellm import kernels
from tilellm.errors import BackendUnavailableError, ShapeError, UnsupportedError
from tilellm.quant import TYPE_INFO, GGMLType, dequantize, quantize, row_bytes

T = GGMLType
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1]
QTYPES = {T.Q8_0, T.Q4_0, T.Q4_1}

RUNNABLE = [v for v in kernels.compiled() if kernels.REQUIRES[v] <= kernels.cpu_features()]


@pytest.fixture(scope="module", params=RUNNABLE)
def lib(request):
    return kernels.load(request.param, n_threads=2)


def test_portable_is_built_and_runs():
    assert "portable" in kernels.compiled()
    assert "portable" in RUNNABLE
    assert kernels.load("portable").variant == "portable"


# ---- references ------------------------------------------------------------------------------

def q8_act_groups(x: np.ndarray):
    """(q int8 [n, k], d float32 [n, k/16]) of the q8 act layout the kernels build for every
    quantized weight type: one f32 scale per 16 values, ggml's rounding."""
    n, k = x.shape
    b = x.reshape(n, k // 16, 16)
    a = np.abs(b)
    bad = ~np.isfinite(a).all(axis=-1, keepdims=True)  # a group holding nan / inf: d = NaN, q = 0 (act.c)
    amax = np.where(np.isfinite(a), a, np.float32(0)).max(axis=-1, keepdims=True)
    d = np.where(bad, np.float32(np.nan), amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        v = (b * inv).astype(np.float32).astype(np.float64)
    v = np.where(bad, 0.0, v)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127)  # roundf: half away from zero
    return q.astype(np.int8).reshape(n, k), d.reshape(n, k // 16)


def q8_act_ref(x: np.ndarray) -> np.ndarray:
    """float64 values of the q8 activations the kernels build (f32 scale per 16, ggml rounding)."""
    n, k = x.shape
    q, d = q8_act_groups(x)
    return (q.reshape(n, k // 16, 16).astype(np.float64) * d[..., None].astype(np.float64)).reshape(n, k)


def f16_act_ref(x: np.ndarray) -> np.ndarray:
    """float64 values of TL_F16 activations (sme/sme2, for f16 weights): per row s = 2^e with
    max finite |x| in [2^(e+14), 2^(e+15)) (e >= -126; s = 1 for an all-zero row), h = f16(x/s)
    round to nearest even; value s * h. Nothing overflows fp16's 65504."""
    a = np.abs(x)
    amax = np.where(np.isfinite(a), a, 0).max(axis=1, keepdims=True)
    _, e = np.frexp(amax)  # amax = f * 2^e, f in [0.5, 1)
    e = np.where(amax > 0, np.maximum(e.astype(np.int64) - 15, -126), 0)
    h = (x * np.ldexp(np.float32(1), -e).astype(np.float32)).astype(np.float32).astype(np.float16)
    return h.astype(np.float64) * np.ldexp(1.0, e)


def bf16_act_ref(x: np.ndarray) -> np.ndarray:
    """float64 values of TL_BF16 activations (sme/sme2, for bf16 weights): round to nearest even."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    return (b << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def act_ref(lib, t: GGMLType, x: np.ndarray) -> np.ndarray:
    """The activations exactly as variant `lib` rounds them for weights of type t, keyed off
    lib.act_type(t): f32 copy, q8 blocks, or (SME widening MOPAs) f16 with a row scale / bf16."""
    at = lib.act_type(t)
    if at == T.F32:
        return x.astype(np.float64)
    if at == T.F16:
        return f16_act_ref(x)
    if at == T.BF16:
        return bf16_act_ref(x)
    assert at in (T.Q8_0, T.Q8_1), f"no reference for {at.name} activations"
    return q8_act_ref(x)


def reference(lib, t: GGMLType, raw: np.ndarray, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact result, scale) with scale = sum |w||x| per output, for relative tolerances; the
    activations rounded as `lib` rounds them (act_ref)."""
    wd = dequantize(raw, t, k).astype(np.float64).reshape(-1, k)
    xd = act_ref(lib, t, x)
    return xd @ wd.T, np.abs(xd) @ np.abs(wd).T


def make(t: GGMLType, m: int, k: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((m, k)) * rng.uniform(0.1, 3.0, size=(m, 1))).astype(np.float32)
    x = (rng.standard_normal((n, k)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
    raw = quantize(w, t)
    assert raw.dtype == np.uint8 and raw.shape == (m, row_bytes(t, k))
    return raw, x


def check_close(y: np.ndarray, ref: np.ndarray, scale: np.ndarray, rtol: float = 1e-5):
    assert y.dtype == np.float32 and y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    bound = rtol * scale + 1e-30
    bad = err > bound
    assert not bad.any(), (f"{bad.sum()} of {bad.size} outputs off; worst |err|/scale = "
                           f"{(err / np.maximum(scale, 1e-30)).max():.3g} at "
                           f"{np.unravel_index(np.argmax(err - bound), err.shape)}")


# (m, k, n): ragged against every tile size, n = 1, k = one block, and a largish case
SHAPES = [(1, 32, 1), (1, 32, 2), (3, 32, 1), (5, 64, 3), (7, 96, 1), (13, 128, 5), (17, 160, 7),
          (33, 256, 9), (64, 512, 1), (65, 64, 4), (300, 1024, 77), (129, 2048, 1), (10, 4096, 13)]
FLOAT_K = [1, 3, 7, 33, 129]  # f32/f16/bf16 take any k


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_reference(lib, t, shape):
    m, k, n = shape
    raw, x = make(t, m, k, n, seed=m * 1000 + k + n)
    y = lib.gemm(t, raw, k, lib.prepare(t, x))
    ref, scale = reference(lib, t, raw, k, x)
    check_close(y, ref, scale)


@pytest.mark.parametrize("t", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("k", FLOAT_K)
def test_float_types_any_k(lib, t, k):
    for m, n in [(1, 1), (6, 5), (11, 2)]:
        raw, x = make(t, m, k, n, seed=k * 7 + m)
        y = lib.gemm(t, raw, k, lib.prepare(t, x))
        ref, scale = reference(lib, t, raw, k, x)
        check_close(y, ref, scale)


@pytest.mark.parametrize("t", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_token_result_independent_of_batch(lib, t):
    """A token's outputs are the same bits alone (n = 1: the variant's gemv if it has one, e.g.
    avx512's prefetching f16 / exact-bf16 gemv) and in batches (register tiles): the arithmetic per
    output depends only on k. Ragged m (not a multiple of any row granularity) and k tails.
    Not sme / sme2: by design batches of 8 or more run the SME outer products and smaller ones NEON.
    Batches of 96 tokens or more take avx512's packed prompt kernel, another summation order:
    test_float_packed_prompt_path."""
    if lib.variant in ("sme", "sme2"):
        pytest.skip("sme batches >= 8 and smaller ones take different kernels (different summation orders)")
    for m, k in [(23, 97), (9, 2048 + 48), (70, 32)]:
        n = 13
        raw, x = make(t, m, k, n, seed=m + k)
        big = lib.gemm(t, raw, k, lib.prepare(t, x))
        check_close(big, *reference(lib, t, raw, k, x))
        for j0, j1 in [(0, 1), (6, 7), (12, 13), (3, 7), (1, 12)]:
            y = lib.gemm(t, raw, k, lib.prepare(t, x[j0:j1]))
            assert np.array_equal(y, big[j0:j1]), (m, k, j0, j1)


# ---- 16-bit activations (sme / sme2: widening FMOPA for f16, BFMOPA for bf16) and the SME tile shapes

def test_act_types_of_the_16bit_mopa_variants(lib):
    """sme/sme2: f16 weights always take f16 activations (widening FMOPA); bf16 weights take
    bf16 ones (BFMOPA) only with the sme_bf16 option (default: $TILELLM_SME_BF16=bfmopa), else f32.
    avx512: bf16 weights take bf16 activations (vdpbf16ps) unless bf16_exact ($TILELLM_BF16_EXACT=1).
    The option belongs to the library: one of each kind side by side keep their own."""
    sme = lib.variant in ("sme", "sme2")
    for flip in (False, True):
        opts = dict(lib.options)
        if flip:
            opts["sme_bf16"], opts["bf16_exact"] = not opts["sme_bf16"], not opts["bf16_exact"]
        lb = kernels.load(lib.variant, **opts)
        bf16_acts = (sme and opts["sme_bf16"]) or (lib.variant == "avx512" and not opts["bf16_exact"])
        want = {T.F16: T.F16 if sme else T.F32, T.BF16: T.BF16 if bf16_acts else T.F32}
        assert {t: lb.act_type(t) for t in want} == want, opts
    assert lib.options["bf16_exact"] == kernels.DEFAULT_OPTIONS["bf16_exact"]


@pytest.mark.parametrize("t", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_packed_prompt_path(lib, t):
    """Prompt-sized batches (avx512 packs the weights into 32-row panels, k in chunks of 256 words,
    from 96 tokens on, f16 from 256) against the reference on ragged shapes: a last panel of 6 rows
    (one half empty), of 18 rows (the second half 2 rows), k tails inside a chunk, odd k (bf16 pairs)
    and a one-block k; the result does not depend on the thread count, nor on a token's place or its
    batch's size (the last n - 4 tokens alone: on the same side of both thresholds)."""
    for m, k, n in [(70, 300, 100), (50, 513, 131), (33, 16, 100), (129, 1000, 101), (18, 2100, 120), (37, 201, 260)]:
        raw, x = make(t, m, k, n, seed=m * 3 + k + n)
        p = lib.prepare(t, x)
        y = lib.gemm(t, raw, k, p, n_threads=1)
        check_close(y, *reference(lib, t, raw, k, x))
        for nth in (2, 3):
            assert np.array_equal(y, lib.gemm(t, raw, k, p, n_threads=nth)), (m, k, n, nth)
        if lib.variant not in ("sme", "sme2"):
            sub = lib.gemm(t, raw, k, lib.prepare(t, x[4:]))
            assert np.array_equal(sub, y[4:]), (m, k, n)


def test_avx512_bf16_exact_path(lib):
    """avx512 bf16 weights under TILELLM_BF16_EXACT=1 (read at load time, so in a child process):
    f32 activations, and the bf16 kernel tests of this file pass against the exact reference
    (act_ref follows act_type) at the same rtol 1e-5."""
    import os
    import subprocess
    import sys

    if lib.variant != "avx512":
        pytest.skip("avx512 only")
    if os.environ.get("TILELLM_BF16_EXACT") == "1":
        pytest.skip("this process already runs the exact path")
    sel = "avx512 and (BF16 or bit_pattern or act_types or threads or strided or packed) and not exact_path"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", sel],
                       env={**os.environ, "TILELLM_BF16_EXACT": "1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


@pytest.mark.parametrize("t", [T.F16, T.BF16], ids=lambda t: t.name)
def test_16bit_activation_rounding_is_not_skipped(lib, t):
    """Where act_type(t) is 16-bit, the result must match the ROUNDED activations and, at this
    tolerance, must NOT match the unrounded ones (so the rounding hook is really needed)."""
    if lib.act_type(t) == T.F32:
        pytest.skip(f"{lib.variant} keeps f32 activations for {t.name}")
    m, k, n = 24, 32, 16  # n >= 8: the SME path
    raw, x = make(t, m, k, n, seed=77)
    y = lib.gemm(t, raw, k, lib.prepare(t, x))
    check_close(y, *reference(lib, t, raw, k, x))
    wd = dequantize(raw, t, k).astype(np.float64).reshape(-1, k)
    with pytest.raises(AssertionError):
        check_close(y, x.astype(np.float64) @ wd.T, np.abs(x.astype(np.float64)) @ np.abs(wd).T)


@pytest.mark.parametrize("n", [1, 5, 40])  # gemv, NEON small batch, SME
def test_f16_activations_beyond_fp16_range(lib, n):
    """Activations far outside fp16 (|x| up to 3e9 and down to 1e-9 in one row, plus an all-zero
    row) must neither overflow nor flush: the per-row scale keeps them in range."""
    m, k = 19, 64
    raw, x = make(T.F16, m, k, n, seed=5)
    rng = np.random.default_rng(6)
    x = (x * np.float32(10.0) ** rng.integers(-9, 9, size=x.shape)).astype(np.float32)
    x[0, :8] = [3e9, -2.5e9, 1e5, 65520, -70000, 1e-9, -3e-8, 0]
    if n > 1:
        x[1] = 0
    y = lib.gemm(T.F16, raw, k, lib.prepare(T.F16, x))
    assert np.isfinite(y).all()
    check_close(y, *reference(lib, T.F16, raw, k, x))


# ragged against every L (4 … 64), 4L and the tall/wide tiles; k > 2 x 1024 takes the
# multi-chunk (y reload) path for 16-bit pairs too; odd k for the float types
SME_SHAPES = [(5, 64, 9), (17, 96, 33), (70, 160, 130), (3, 32, 200), (131, 64, 8), (37, 2080, 19), (9, 129, 11)]


@pytest.mark.parametrize("tile", ["16x64", "64x16", None])
def test_sme_tile_shapes(lib, tile):
    """Both SME micro-kernel shapes (forced through the sme_tile option of a second library) against
    the reference on ragged sizes, every type; f32 accumulation order is the same in both shapes, so
    the forced results must also equal the automatic choice bit for bit."""
    if lib.variant not in ("sme", "sme2"):
        pytest.skip("SME only")
    opts = {k: v for k, v in lib.options.items() if k != "sme_tile"}
    auto_lib = kernels.load(lib.variant, n_threads=2, sme_tile="auto", **opts)
    forced = kernels.load(lib.variant, n_threads=2, sme_tile=tile or "auto", **opts)
    for m, k, n in SME_SHAPES:
        for t in TYPES:
            if k % TYPE_INFO[t].block_size:
                continue
            raw, x = make(t, m, k, n, seed=m * 31 + k + n)
            auto = auto_lib.gemm(t, raw, k, auto_lib.prepare(t, x))
            y = forced.gemm(t, raw, k, forced.prepare(t, x))
            check_close(y, *reference(lib, t, raw, k, x))
            assert np.array_equal(y, auto), f"{t.name} {m}x{k}x{n}: {tile} differs from the automatic shape"


def test_wrong_nibble_order_would_be_caught(lib):
    """The tolerance is tight enough that swapping q4_0's nibble halves fails the check."""
    m, k, n = 8, 64, 3
    raw, x = make(T.Q4_0, m, k, n, seed=5)
    swapped = raw.copy().reshape(m, k // 32, 18)
    qs = swapped[..., 2:]
    swapped[..., 2:] = (qs >> 4) | (qs << 4)
    y = lib.gemm(T.Q4_0, raw, k, lib.prepare(T.Q4_0, x))
    ref_bad, scale = reference(lib, T.Q4_0, swapped.reshape(m, -1), k, x)
    with pytest.raises(AssertionError):
        check_close(y, ref_bad, scale)


def test_activation_rounding_is_half_away_from_zero(lib):
    """q8_0 weights that pick single activations (d = 1, one-hot q = 1) read back the
    quantized activation values: with amax = 127 in each group of 16 the scale is exactly 1,
    so x = 2.5 -> 3; a group whose amax is 0.25 keeps its own scale (q = 127 each)."""
    k = 64
    vals = np.array([127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 3.49, -3.51, 0, 126.5, -126.5, 0.25, 0.25, 0.25, 0.25]
                    + [-4.5, 4.5, -127, 5.5, -0.49, 0.51, 7.5, -7.5] + [0.125] * 8
                    + [0.0] * 16 + [0.25] * 16, np.float32)
    x = vals[None, :]
    expect = np.array([127, 3, -3, 1, -1, 2, -2, 3, -4, 0, 127, -127, 0, 0, 0, 0]
                      + [-5, 5, -127, 6, 0, 1, 8, -8] + [0] * 8
                      + [0] * 16 + [np.float32(0.25) / np.float32(127) * np.float32(127)] * 16, np.float64)
    blocks = np.zeros((k, k // 32, 34), np.uint8)
    blocks[:, :, 0:2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    blocks[np.arange(k), np.arange(k) // 32, 2 + np.arange(k) % 32] = 1
    y = lib.gemm(T.Q8_0, blocks.reshape(k, -1), k, lib.prepare(T.Q8_0, x))
    np.testing.assert_array_equal(y[0], expect)


def test_f16_bf16_conversion_every_bit_pattern(lib):
    """All 65536 f16 / bf16 patterns through an identity matmul: finite values (subnormals
    included) must come back exactly; inf and nan are checked on the diagonal."""
    k = 256
    eye = np.eye(k, dtype=np.float32)
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    for t in (T.F16, T.BF16):
        as_f32 = (bits.view(np.float16).astype(np.float32) if t == T.F16
                  else (bits.astype(np.uint32) << 16).view(np.float32))
        finite = np.isfinite(as_f32)
        wbits = np.where(finite, bits, 0).astype(np.uint16).reshape(-1, k)
        y = lib.gemm(t, wbits.view(np.uint8), k, lib.prepare(t, eye))
        want = np.where(finite, as_f32, 0).reshape(-1, k)
        if lib.act_type(t) == T.BF16:
            # BFMOPA (sme/sme2) follows the Arm ARM's BFDotAdd: without FEAT_EBF16 + FPCR.EBF it
            # flushes subnormal inputs and outputs to zero. Exactly the 254 subnormal bf16
            # patterns (|w| < 2^-126) may read back as 0; every other value stays exact.
            sub = (want != 0) & (np.abs(want) < np.finfo(np.float32).tiny)
            assert sub.sum() == 254
            flushed = sub & (y.T == 0)
            want = np.where(flushed, 0, want)
        np.testing.assert_array_equal(y.T, want)
        # specials: row i holds special value i at position i
        spec = bits[~finite][:k]
        w = np.zeros((len(spec), k), np.uint16)
        w[np.arange(len(spec)), np.arange(len(spec))] = spec
        y = lib.gemm(t, w.view(np.uint8), k, lib.prepare(t, eye))
        diag = y[np.arange(len(spec)), np.arange(len(spec))]
        want = as_f32[~finite][:k]
        assert np.array_equal(np.isnan(diag), np.isnan(want))
        np.testing.assert_array_equal(diag[~np.isnan(want)], want[~np.isnan(want)])


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_threads_bit_identical(lib, t):
    """The tile decomposition does not depend on the thread count, so neither do results."""
    for m, k, n in [(70, 256, 19), (203, 512, 1), (9, 64, 40)]:
        raw, x = make(t, m, k, n, seed=m + n)
        p = lib.prepare(t, x, n_threads=1)
        p2 = lib.prepare(t, x, n_threads=2)
        assert np.array_equal(p.buf, p2.buf)
        y1 = lib.gemm(t, raw, k, p, n_threads=1)
        for nth in (2, 3):
            assert np.array_equal(y1, lib.gemm(t, raw, k, p, n_threads=nth)), f"n_threads={nth} differs"


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_gemv_runs_and_steals_bit_identical(lib, t):
    """One token (and a few: the small-n split) over several products: each thread owns a run of row chunks and
    steals halves of the others' runs when its own is done; every output is computed once and equals the
    one-thread result, for more threads than cores too (late or absent workers leave their runs to thieves)."""
    k = 256
    ws = [make(t, m, k, 1, seed=m)[0] for m in (203, 16, 37, 1, 96)]
    _, x = make(t, 1, k, 3, seed=5)
    for n in (1, 3):
        p = lib.prepare(t, x[:n])
        want = lib.gemm_many([(t, w) for w in ws], k, p, n_threads=1)
        for w, y in zip(ws, want):
            check_close(y, *reference(lib, t, w, k, x[:n]))
        for nth in (2, 3, 5, 8):
            for _ in range(3):  # the split between threads varies from call to call
                got = lib.gemm_many([(t, w) for w in ws], k, p, n_threads=nth)
                for y0, y in zip(want, got):
                    assert np.array_equal(y0, y), f"n={n} n_threads={nth} differs"
            assert np.array_equal(want[0], lib.gemm(t, ws[0], k, p, n_threads=nth))


def test_out_and_prepared_reuse(lib):
    m, k, n = 40, 128, 6
    raw8, x = make(T.Q8_0, m, k, n, seed=1)
    raw4, _ = make(T.Q4_0, m + 3, k, n, seed=2)
    p = lib.prepare(T.Q8_0, x)  # q8_0 and q4_0 share the activation type
    assert lib.act_type(T.Q4_0) == lib.act_type(T.Q8_0) == p.act_type
    out = np.full((n, m), np.nan, np.float32)
    res = lib.gemm(T.Q8_0, raw8, k, p, out=out)
    assert res is out
    check_close(out, *reference(lib, T.Q8_0, raw8, k, x))
    y4 = lib.gemm(T.Q4_0, raw4, k, p)
    check_close(y4, *reference(lib, T.Q4_0, raw4, k, x))
    again = lib.gemm(T.Q8_0, raw8, k, p)
    assert np.array_equal(again, out)
    # prepared f32 activations serve every float weight type whose act type is F32 (all of
    # them, except f16 / bf16 on sme/sme2, which want their own rounded 16-bit rows)
    pf = lib.prepare(T.F32, x)
    for t in (T.F16, T.BF16, T.F32):
        rw, _ = make(t, m, k, n, seed=3)
        if lib.act_type(t) == T.F32:
            check_close(lib.gemm(t, rw, k, pf), *reference(lib, t, rw, k, x))
        else:
            with pytest.raises(ShapeError, match="activations"):
                lib.gemm(t, rw, k, pf)
            check_close(lib.gemm(t, rw, k, lib.prepare(t, x)), *reference(lib, t, rw, k, x))


def test_prepared_is_a_copy(lib):
    raw, x = make(T.F32, 8, 64, 3, seed=4)
    p = lib.prepare(T.F32, x)
    y0 = lib.gemm(T.F32, raw, 64, p)
    x[:] = 0
    assert np.array_equal(lib.gemm(T.F32, raw, 64, p), y0)


def test_strided_readonly_weights_and_activations(lib):
    """Weights as a read-only strided view (like rows of an mmap), activations as a slice."""
    m, k, n = 23, 96, 5
    for t in TYPES:
        raw, x = make(t, m, k, n, seed=9)
        rb = raw.shape[1]
        off = 4 if t == T.F32 else 5  # f32 rows must be 4-byte aligned, the others need not be
        big = np.zeros((2 * m, rb + 12), np.uint8)
        big[::2, off:off + rb] = raw
        big.setflags(write=False)
        view = big[::2, off:off + rb]
        assert not view.flags.c_contiguous and not view.flags.writeable
        xbig = np.zeros((n, k + 8), np.float32)
        xbig[:, 3:3 + k] = x
        y = lib.gemm(t, view, k, lib.prepare(t, xbig[:, 3:3 + k]))
        check_close(y, *reference(lib, t, raw, k, x))


def test_concurrent_python_threads(lib):
    m, k, n = 96, 512, 8
    raw, x = make(T.Q4_1, m, k, n, seed=11)
    p = lib.prepare(T.Q4_1, x)
    want = lib.gemm(T.Q4_1, raw, k, p)
    errors = []

    def work():
        try:
            for _ in range(20):
                if not np.array_equal(lib.gemm(T.Q4_1, raw, k, p, n_threads=2), want):
                    errors.append("mismatch")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=work) for _ in range(3)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    assert not errors


# ---- validation ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def q8(lib):
    m, k, n = 6, 64, 3
    raw, x = make(T.Q8_0, m, k, n, seed=21)
    return raw, x, lib.prepare(T.Q8_0, x), m, k, n


def test_validation_weights(lib, q8):
    raw, x, p, m, k, n = q8
    with pytest.raises(ShapeError, match="uint8"):
        lib.gemm(T.Q8_0, raw.view(np.int8), k, p)
    with pytest.raises(ShapeError, match="2-D"):
        lib.gemm(T.Q8_0, raw.reshape(-1), k, p)
    with pytest.raises(ShapeError, match="bytes"):
        lib.gemm(T.Q8_0, raw[:, :-2], k, p)  # wrong row_bytes
    wide = np.zeros((m, 2 * raw.shape[1]), np.uint8)
    with pytest.raises(ShapeError, match="contiguous"):
        lib.gemm(T.Q8_0, wide[:, ::2], k, p)  # right shape, rows not contiguous
    with pytest.raises(ShapeError, match="stride"):
        lib.gemm(T.Q8_0, raw[::-1], k, p)  # negative row stride
    with pytest.raises(ShapeError, match="numpy"):
        lib.gemm(T.Q8_0, raw.tobytes(), k, p)
    with pytest.raises(ShapeError, match="at least 1"):
        lib.gemm(T.Q8_0, raw[:0], k, p)
    rawf, xf = make(T.F32, m, k, n, seed=3)
    pf = lib.prepare(T.F32, xf)
    odd = np.zeros((m, rawf.shape[1] + 3), np.uint8)
    odd[:, 1:1 + rawf.shape[1]] = rawf
    with pytest.raises(ShapeError, match="aligned"):
        lib.gemm(T.F32, odd[:, 1:1 + rawf.shape[1]], k, pf)  # f32 rows at odd addresses


def test_validation_k_and_prepared(lib, q8):
    raw, x, p, m, k, n = q8
    with pytest.raises(ShapeError, match="multiple"):
        lib.gemm(T.Q8_0, raw, 48, p)
    with pytest.raises(ShapeError, match="multiple"):
        lib.prepare(T.Q4_0, np.zeros((2, 48), np.float32))
    with pytest.raises(ShapeError, match=">= 1"):
        lib.gemm(T.F32, np.zeros((2, 0), np.uint8), 0, lib.prepare(T.F32, np.zeros((1, 1), np.float32)))
    raw32, _ = make(T.Q8_0, m, 32, n, seed=1)
    with pytest.raises(ShapeError, match="k = 64"):
        lib.gemm(T.Q8_0, raw32, 32, p)  # k mismatch with Prepared
    with pytest.raises(ShapeError, match="activations"):
        lib.gemm(T.F32, np.zeros((m, 4 * k), np.uint8), k, p)  # act type mismatch
    with pytest.raises(ShapeError, match="prepare"):
        lib.gemm(T.Q8_0, raw, k, x)  # raw activations instead of a Prepared
    with pytest.raises(ShapeError):
        lib.gemm(T.Q8_0, raw, 64.0, p)
    with pytest.raises(ShapeError, match="n_threads"):
        lib.gemm(T.Q8_0, raw, k, p, n_threads=0)


def test_validation_activations(lib):
    with pytest.raises(ShapeError, match="float32"):
        lib.prepare(T.F32, np.zeros((2, 8), np.float64))
    with pytest.raises(ShapeError, match="2-D"):
        lib.prepare(T.F32, np.zeros(8, np.float32))
    with pytest.raises(ShapeError, match="at least 1"):
        lib.prepare(T.F32, np.zeros((0, 8), np.float32))
    with pytest.raises(ShapeError, match="contiguous"):
        lib.prepare(T.F32, np.zeros((2, 16), np.float32)[:, ::2])
    with pytest.raises(ShapeError, match="stride"):
        lib.prepare(T.F32, np.zeros((2, 8), np.float32)[::-1])
    with pytest.raises(ShapeError):
        lib.prepare(T.F32, [[1.0, 2.0]])


def test_validation_out(lib, q8):
    raw, x, p, m, k, n = q8
    with pytest.raises(ShapeError, match="shape"):
        lib.gemm(T.Q8_0, raw, k, p, out=np.empty((m, n), np.float32))
    with pytest.raises(ShapeError, match="float32"):
        lib.gemm(T.Q8_0, raw, k, p, out=np.empty((n, m), np.float64))
    ro = np.empty((n, m), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ShapeError, match="read-only"):
        lib.gemm(T.Q8_0, raw, k, p, out=ro)
    with pytest.raises(ShapeError, match="contiguous"):
        lib.gemm(T.Q8_0, raw, k, p, out=np.empty((n, 2 * m), np.float32)[:, ::2])
    buf = np.zeros(raw.nbytes + 4 * n * m, np.uint8)
    alias_w = buf[:raw.nbytes].reshape(raw.shape)
    alias_w[:] = raw
    with pytest.raises(ShapeError, match="overlaps"):
        lib.gemm(T.Q8_0, alias_w, k, p, out=buf[:4 * n * m].view(np.float32).reshape(n, m))


def test_unsupported_types(lib):
    # Q8_K / Q8_1 are activation formats only (no weight kernel anywhere); 12345 is no type
    assert not lib.supports(T.Q8_K) and not lib.supports(T.Q8_1) and not lib.supports(12345)
    assert not lib.supports(2.0) and not lib.supports(True)  # not type ids
    with pytest.raises(UnsupportedError):
        lib.prepare(T.Q8_K, np.zeros((1, 256), np.float32))
    with pytest.raises(UnsupportedError):
        lib.gemm("nonsense", np.zeros((1, 34), np.uint8), 32, None)
    for t in TYPES:
        assert lib.supports(t) in (True, False)
    assert lib.act_type(T.Q4_1) == T.Q8_1 if lib.supports(T.Q4_1) else True


def test_load_errors():
    with pytest.raises(BackendUnavailableError, match="unknown"):
        kernels.load("vax")
    foreign = "neon" if platform.machine().lower() in ("x86_64", "amd64") else "avx2"
    with pytest.raises(BackendUnavailableError):
        kernels.load(foreign)


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="x86 Linux only")
def test_cpu_features_match_proc_cpuinfo():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    names = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
             "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512vnni": "avx512_vnni",
             "avx512bf16": "avx512_bf16", "amx_tile": "amx_tile", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
             "avx_vnni": "avx_vnni"}
    feats = kernels.detected_cpu_features()
    for ours, linux in names.items():
        assert (ours in feats) == (linux in flags), ours


def _capped_child(code: str, cap: str) -> subprocess.CompletedProcess:
    """Python `code` run in a child with $TILELLM_CPU_CAP=cap (the cap is read once, at start)."""
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "TILELLM_CPU_CAP": cap},
                          capture_output=True, text=True, timeout=120)


def test_cpu_cap_limits_features_and_backends():
    """$TILELLM_CPU_CAP=avx2 (read once at start, so in a child) hides everything beyond AVX2 from the registry."""
    code = ("from tilellm import kernels, backend; "
            "print(sorted(kernels.cpu_features())); print(backend.available())")
    r = _capped_child(code, "avx2")
    assert r.returncode == 0, r.stderr
    feats, avail = r.stdout.splitlines()
    assert set(eval(feats)) <= {"avx2", "fma", "f16c"}
    assert not any(v in avail for v in ("avx512", "avxvnni", "amx", "neon", "sme"))
    if {"avx2", "fma", "f16c"} <= kernels.detected_cpu_features() and "avx2" in kernels.compiled():
        assert "'avx2'" in avail
    bad = _capped_child(code, "avx9")
    assert bad.returncode != 0 and "TILELLM_CPU_CAP" in bad.stderr


def test_avxvnni_is_chosen_without_avx512():
    """An AVX-VNNI CPU without AVX-512 (capped to avxvnni here, in a child: the cap is read once) runs the avxvnni
    variant in "auto", with avx2 behind it for what it lacks; an AVX-512 CPU keeps avx512 first."""
    from tilellm import backend as backends
    from tilellm.backend import registry

    assert registry.fallback_of("avxvnni") == "avx2"
    if "avx_vnni" not in kernels.detected_cpu_features() or "avxvnni" not in kernels.compiled():
        pytest.skip("no AVX-VNNI here, or the avxvnni variant was not built")
    if {"avx512", "avxvnni"} <= set(RUNNABLE):
        assert backends.available().index("avx512") < backends.available().index("avxvnni")
    code = ("from tilellm import backend, kernels; be = backend.get('auto', n_threads=1); "
            "print(backend.available()); print(be.lib.variant, be.fallback.lib.variant)")
    r = _capped_child(code, "avxvnni")
    assert r.returncode == 0, r.stderr
    avail, chosen = r.stdout.splitlines()
    assert eval(avail) == ["avxvnni", "avx2", "portable", "reference"]
    assert chosen == "avxvnni avx2"


def _extreme_q(t: GGMLType, m: int, k: int, rng) -> np.ndarray:
    """Blocks of q8_0 / q4_0 / q4_1 whose quants all sit at one end of their range (q8_0 -128 or 127, the
    nibbles 0 or 15), chosen per block, with random scales: the widest integer sums a group dot meets."""
    raw, _ = make(t, m, k, 1, seed=int(rng.integers(1 << 30)))
    bs = TYPE_INFO[t].type_size
    blocks = raw.reshape(m, k // 32, bs)
    head = {T.Q8_0: 2, T.Q4_0: 2, T.Q4_1: 4}[t]
    ends = np.array([0x80, 0x7F] if t == T.Q8_0 else [0x00, 0xFF], np.uint8)
    blocks[..., head:] = rng.choice(ends, size=(m, k // 32, 1))
    return raw


@pytest.mark.parametrize("t", [T.Q8_0, T.Q4_0, T.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 5])
def test_extreme_quants_exact(lib, t, n):
    """Extreme quants against +-127 activations (row 0 all +, row 1 all -, then random signs, so the groups'
    activation sums reach +-2032): an int16 sum that overflowed (x86 q4_0 folds -8 * isum into the vpmaddubsw
    sums) or a saturating step would be far off."""
    rng = np.random.default_rng(5 + n)
    m, k = 21, 512
    raw = _extreme_q(t, m, k, rng)
    x = (rng.choice([-1.0, 1.0], size=(n, k)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
    x[0] = abs(x[0])
    if n > 1:
        x[1] = -abs(x[1])
    y = lib.gemm(t, raw, k, lib.prepare(t, x))
    check_close(y, *reference(lib, t, raw, k, x))


# ---- sanitizers (slow: compiles the C fuzz harness once per variant and sanitizer) ---------------

def _build_variants_module():
    import pathlib

    from conftest import script_module

    path = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "build_variants.py"
    return script_module("_tl_bv_for_tests", path)


@pytest.mark.slow
@pytest.mark.parametrize("san", ["address,undefined", "thread"])
@pytest.mark.parametrize("variant", RUNNABLE)
def test_sanitizers(variant, san, tmp_path):
    """kernels/tests/fuzz_gemm.c: random ragged shapes, exact-size buffers, padded strides,
    3 concurrent callers; ASan+UBSan (errors fatal, leaks reported) and TSan must stay silent."""
    import os
    import shutil
    import subprocess

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    bv = _build_variants_module()
    srcs = bv.sources(variant)
    harness = os.path.join(bv.HERE, "tests", "fuzz_gemm.c")
    exe = str(tmp_path / "fuzz")
    cmd = [cc, "-O1", "-g", f"-fsanitize={san}", "-fno-omit-frame-pointer", *bv.VARIANTS[variant][1],
           "-I", bv.INCLUDE, "-I", bv.SRC, *srcs, harness, "-lm", "-pthread", "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot build with -fsanitize={san}: {r.stderr.strip().splitlines()[-1:]}")
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", TSAN_OPTIONS="halt_on_error=1")
    r = subprocess.run([exe, "150", "3"], capture_output=True, text=True, env=env, timeout=600)
    report = (r.stdout + r.stderr)[-3000:]
    if "unexpected memory mapping" in r.stderr:
        pytest.skip("TSan cannot run under this kernel's memory layout")
    assert r.returncode == 0 and "0 failures" in r.stdout, report
    assert "runtime error" not in r.stderr and "WARNING: ThreadSanitizer" not in r.stderr, report
