"""The decode fast paths, on every runnable variant: tl_gemm_many (several products sharing one prepared
activation) equals separate gemm calls bit for bit for ragged row counts, n = 1 (one dispatch) and n > 1;
plans (weights checked once) run like gemm; the fused preparations (RMS norm, SwiGLU) equal their numpy
definitions to a few ulp and then prepare exactly what prepare() makes of their output; bad arguments are
refused with a clear error."""
from __future__ import annotations

import numpy as np
import pytest

from tilellm import backend, kernels
from tilellm.errors import ShapeError
from tilellm.quant import GGMLType, TensorView, dequantize, quantize

T = GGMLType
RUNNABLE = [v for v in kernels.compiled() if kernels.REQUIRES[v] <= kernels.cpu_features()]
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0]  # the types tilellm.quant can quantize


@pytest.fixture(scope="module", params=RUNNABLE)
def lib(request):
    return kernels.load(request.param, n_threads=2)


def _weights(t: GGMLType, ms, k: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [quantize(rng.standard_normal((m, k)).astype(np.float32), t) for m in ms]


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 2, 9])
def test_gemm_many_equals_separate_gemms(lib, t, n):
    if not lib.supports(t):
        pytest.skip(f"{lib.variant} has no {t.name} kernel")
    k = 512
    ms = [300, 17, 33, 1]  # ragged against every panel / tile height, and a single row
    ws = _weights(t, ms, k, seed=n)
    x = np.random.default_rng(n + 100).standard_normal((n, k)).astype(np.float32)
    p = lib.prepare(t, x)
    many = lib.gemm_many([(t, w) for w in ws], k, p)
    for w, y in zip(ws, many):
        assert y.shape == (n, w.shape[0])
        assert np.array_equal(y, lib.gemm(t, w, k, p))
    # and the values are right (not merely consistent): against float64 on the dequantized weights
    y0 = many[0].astype(np.float64)
    ref = x.astype(np.float64) @ dequantize(ws[0], t, k).astype(np.float64).T
    scale = np.abs(x).astype(np.float64) @ np.abs(dequantize(ws[0], t, k)).astype(np.float64).T
    assert np.all(np.abs(y0 - ref) <= 0.02 * scale + 1e-6)


def test_gemm_many_mixed_types_with_one_activation(lib):
    """q4_0 and q8_0 (and q5_0, the K-quants) take the same activation layout: one call serves them all."""
    k = 256
    types = [t for t in (T.Q4_0, T.Q8_0, T.Q4_1, T.Q5_0) if lib.supports(t)]
    acts = {lib.act_type(t) for t in types}
    types = [t for t in types if lib.act_type(t) == lib.act_type(types[0])]
    if len(types) < 2:
        pytest.skip(f"{lib.variant}: fewer than two types share an activation type ({acts})")
    ws = [_weights(t, [40 + i], k, seed=i)[0] for i, t in enumerate(types)]
    x = np.random.default_rng(7).standard_normal((1, k)).astype(np.float32)
    p = lib.prepare(types[0], x)
    for t, w, y in zip(types, ws, lib.gemm_many(list(zip(types, ws)), k, p)):
        assert np.array_equal(y, lib.gemm(t, w, k, p))


def test_gemm_many_refuses_bad_arguments(lib):
    k = 64
    w32 = _weights(T.F32, [8], k, 0)[0]
    x = np.ones((1, k), np.float32)
    p = lib.prepare(T.F32, x)
    with pytest.raises(ShapeError, match="1..8 weights"):
        lib.gemm_many([], k, p)
    with pytest.raises(ShapeError, match="1..8 weights"):
        lib.gemm_many([(T.F32, w32)] * 9, k, p)
    if lib.supports(T.Q8_0) and lib.act_type(T.Q8_0) != lib.act_type(T.F32):
        wq = _weights(T.Q8_0, [8], k, 1)[0]
        with pytest.raises(ShapeError, match="activations"):
            lib.gemm_many([(T.F32, w32), (T.Q8_0, wq)], k, p)
    with pytest.raises(ShapeError, match="bytes but"):  # a weight of another k
        lib.gemm_many([(T.F32, w32), (T.F32, _weights(T.F32, [8], 2 * k, 2)[0])], k, p)
    out = np.empty((1, 8), np.float32)
    with pytest.raises(ShapeError, match="overlap each other"):
        lib.gemm_many([(T.F32, w32), (T.F32, w32)], k, p, outs=[out, out])
    with pytest.raises(ShapeError, match="2 weights but 1 outputs"):
        lib.gemm_many([(T.F32, w32), (T.F32, w32)], k, p, outs=[out])


@pytest.mark.parametrize("name", ["reference"] + RUNNABLE)
def test_matmul_many_through_every_backend(name):
    """The model's entry point: same results as one matmul per weight, for any backend (the reference
    backend has no matmul_many and loops), with raw and prepared activations."""
    be = backend.get(name, n_threads=2)
    k = 128
    views = [TensorView.from_bytes(f"w{i}", (k, m), T.Q4_0, w.reshape(-1))
             for i, (m, w) in enumerate(zip([70, 16, 16], _weights(T.Q4_0, [70, 16, 16], k, 3)))]
    x = np.random.default_rng(5).standard_normal((1, k)).astype(np.float32)
    for arg in (x, be.prepare(x, T.Q4_0)):
        got = be.matmul_many(views, arg)
        for v, y in zip(views, got):
            assert np.array_equal(y, be.matmul(v, arg))


@pytest.mark.parametrize("t", [T.Q8_0, T.Q4_0, T.Q4_1], ids=lambda t: t.name)
def test_quantized_token_result_independent_of_batch(lib, t):
    """A token decoded alone (n = 1: the gemv, e.g. avx512's q4_0 gemv over block pairs) gets the same bits
    as its row of a batch: full and ragged 16-row panels, an even and an odd number of blocks (a pair
    path's lone last block), one block. Not sme / sme2, whose small batches take NEON by design."""
    if lib.variant in ("sme", "sme2"):
        pytest.skip("sme batches >= 8 and smaller ones take different kernels")
    rng = np.random.default_rng(7)
    for m, k in [(48, 64), (37, 96), (16, 32), (203, 2048), (70, 288), (33, 5632)]:
        (w,) = _weights(t, [m], k, seed=m + k)
        x = (rng.standard_normal((4, k)) * 2).astype(np.float32)
        batch = lib.gemm(t, w, k, lib.prepare(t, x))
        for j in range(4):
            assert np.array_equal(lib.gemm(t, w, k, lib.prepare(t, x[j:j + 1])), batch[j:j + 1]), (m, k, j)


# ---- plans: weights checked once (what decode does with every matrix, once per token) ----------------

def test_plans_run_like_gemm(lib):
    k = 256
    ws = _weights(T.Q4_0, [48, 16, 5], k, 11)
    x = np.random.default_rng(12).standard_normal((3, k)).astype(np.float32)
    p = lib.prepare(T.Q4_0, x)
    plans = [lib.plan(T.Q4_0, w, k) for w in ws]
    assert [y.shape for y in lib.run(plans, p)] == [(3, 48), (3, 16), (3, 5)]
    for w, y in zip(ws, lib.run(plans, p)):
        assert np.array_equal(y, lib.gemm(T.Q4_0, w, k, p))
    (one,) = lib.run(plans[:1], p)
    assert np.array_equal(one, lib.gemm(T.Q4_0, ws[0], k, p))


def test_plans_refuse_what_gemm_refuses(lib):
    k = 64
    w = _weights(T.Q8_0, [8], k, 13)[0]
    with pytest.raises(ShapeError, match="bytes but"):
        lib.plan(T.Q8_0, w, 2 * k)
    with pytest.raises(ShapeError, match="uint8"):
        lib.plan(T.Q8_0, w.view(np.int8), k)
    plan = lib.plan(T.Q8_0, w, k)
    other = kernels.load("portable") if lib.variant != "portable" else None
    if other is not None:
        with pytest.raises(ShapeError, match="this library"):
            other.run([plan], other.prepare(T.Q8_0, np.ones((1, k), np.float32)))
    with pytest.raises(ShapeError, match="k = 128"):  # activations of another k
        lib.run([plan], lib.prepare(T.Q8_0, np.ones((1, 2 * k), np.float32)))
    if lib.act_type(T.F32) != lib.act_type(T.Q8_0):
        with pytest.raises(ShapeError, match="activations"):
            lib.run([plan], lib.prepare(T.F32, np.ones((1, k), np.float32)))
        with pytest.raises(ShapeError, match="share the activation type"):
            lib.run([plan, lib.plan(T.F32, _weights(T.F32, [8], k, 14)[0], k)],
                    lib.prepare(T.Q8_0, np.ones((1, k), np.float32)))


def test_prepared_changed_after_the_fact_is_checked_in_full(lib):
    """The fast path trusts only a Prepared that is as prepare() made it; a swapped buffer is checked again."""
    k = 64
    w = _weights(T.Q8_0, [4], k, 15)[0]
    p = lib.prepare(T.Q8_0, np.ones((2, k), np.float32))
    want = lib.gemm(T.Q8_0, w, k, p)
    p.buf = p.buf[:-64]  # too short now: C must never see it
    with pytest.raises(ShapeError, match="altered"):
        lib.gemm(T.Q8_0, w, k, p)
    p2 = lib.prepare(T.Q8_0, np.ones((2, k), np.float32))
    p2.n = 1  # claims fewer rows than it holds
    with pytest.raises(ShapeError, match="altered"):
        lib.run([lib.plan(T.Q8_0, w, k)], p2)
    assert want.shape == (2, 4)


# ---- fused RMS norm + activation preparation (tl_act_prepare_rms) -----------------------------------

@pytest.mark.parametrize("t", [T.F32, T.BF16, T.Q8_0, T.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 5])
def test_prepare_rms_equals_norm_then_prepare(lib, t, n):
    """The fused call normalises like layers.rms_norm (to float32 rounding of the mean: it sums squares in
    double) and then prepares exactly what prepare() makes of its own normalised rows."""
    from tilellm.backend.ops import rms_norm

    if not lib.supports(t):
        pytest.skip(f"{lib.variant} has no {t.name} kernel")
    k = 512
    rng = np.random.default_rng(n)
    big = (rng.standard_normal((n, k + 8)) * 3).astype(np.float32)
    x = big[:, 4:4 + k]  # strided rows
    w = rng.uniform(0.5, 1.5, k).astype(np.float32)
    p, xn = lib.prepare_rms(t, x, w, 1e-5)
    want = rms_norm(np.ascontiguousarray(x), w, 1e-5)
    np.testing.assert_allclose(xn, want, rtol=4e-7, atol=0)
    assert np.array_equal(p.buf, lib.prepare(t, xn).buf)
    raw = (_weights(t, [9], k, 3)[0] if t != T.Q4_K else None)
    if raw is not None:
        assert np.array_equal(lib.gemm(t, raw, k, p), lib.gemm(t, raw, k, lib.prepare(t, xn)))


def test_prepare_rms_refuses_bad_arguments(lib):
    k = 64
    x = np.ones((2, k), np.float32)
    for bad in (np.ones(k, np.float64), np.ones(k + 1, np.float32), np.ones((1, k), np.float32), [1.0] * k):
        with pytest.raises(ShapeError, match="norm weights"):
            lib.prepare_rms(T.F32, x, bad, 1e-6)
    with pytest.raises(ShapeError, match="float32"):
        lib.prepare_rms(T.F32, x.astype(np.float64), np.ones(k, np.float32), 1e-6)


@pytest.mark.parametrize("name", ["reference"] + RUNNABLE)
def test_prepare_normed_through_every_backend(name):
    from tilellm.backend.ops import rms_norm

    be = backend.get(name, n_threads=2)
    k = 256
    h = np.random.default_rng(9).standard_normal((3, k)).astype(np.float32)
    w = np.linspace(0.5, 2.0, k, dtype=np.float32)
    p = be.prepare_rms_norm(h, w, 1e-6, T.Q8_0)
    np.testing.assert_allclose(p.x, rms_norm(h, w, 1e-6), rtol=4e-7, atol=0)
    wv = TensorView.from_bytes("w", (k, 7), T.Q8_0, _weights(T.Q8_0, [7], k, 4)[0].reshape(-1))
    assert np.array_equal(be.matmul(wv, p), be.matmul(wv, p.x))


# ---- fused SwiGLU + activation preparation (tl_act_prepare_swiglu) ----------------------------------

def test_prepare_swiglu_matches_float64(lib):
    k = 1024
    rng = np.random.default_rng(21)
    g = (rng.standard_normal((3, k)) * np.array([[1.0], [10.0], [60.0]])).astype(np.float32)
    u = rng.standard_normal((3, k)).astype(np.float32)
    g[0, :8] = [0.0, -0.0, 87.9, -87.9, 1e-30, -1e-30, 200.0, -200.0]
    p, xn = lib.prepare_swiglu(T.Q8_0, g, u)
    gd, ud = g.astype(np.float64), u.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = gd / (1.0 + np.exp(-gd)) * ud
    big = np.abs(ref) > 1e-30
    ulp = np.abs(xn[big] - ref[big]) / np.spacing(np.abs(ref[big]).astype(np.float32))
    assert ulp.max() <= 4.0, ulp.max()
    assert np.all(np.abs(xn[~big]) <= 1e-30)
    assert xn[0, 6] == np.float32(200.0) * u[0, 6]
    assert np.array_equal(p.buf, lib.prepare(T.Q8_0, xn).buf)


def test_prepare_swiglu_nan_and_bad_arguments(lib):
    k = 64
    g = np.zeros((1, k), np.float32)
    g[0, 3] = np.nan
    _, xn = lib.prepare_swiglu(T.F32, g, np.ones((1, k), np.float32))
    assert np.isnan(xn[0, 3]) and not np.isnan(np.delete(xn[0], 3)).any()
    with pytest.raises(ShapeError, match="differ in shape"):
        lib.prepare_swiglu(T.F32, g, np.ones((2, k), np.float32))
    with pytest.raises(ShapeError, match="C-contiguous float32"):
        lib.prepare_swiglu(T.F32, g, np.ones((2, 2 * k), np.float32)[:1, ::2])
    with pytest.raises(ShapeError, match="multiple"):
        lib.prepare_swiglu(T.Q8_0, np.ones((1, 48), np.float32), np.ones((1, 48), np.float32))


@pytest.mark.parametrize("name", ["reference"] + RUNNABLE)
def test_prepare_swiglu_through_every_backend(name):
    from tilellm.backend.ops import silu

    be = backend.get(name, n_threads=2)
    k = 256
    rng = np.random.default_rng(22)
    g, u = (rng.standard_normal((2, k)) * 4).astype(np.float32), rng.standard_normal((2, k)).astype(np.float32)
    p = be.prepare_swiglu(g, u, T.Q4_0)
    np.testing.assert_allclose(p.x, silu(g) * u, rtol=5e-7, atol=1e-30)
    with pytest.raises(ShapeError, match="differ in shape"):  # not numpy's silent broadcasting
        be.prepare_swiglu(g[:1], u[0], T.Q4_0)
    wv = TensorView.from_bytes("w", (k, 5), T.Q4_0, _weights(T.Q4_0, [5], k, 6)[0].reshape(-1))
    assert np.array_equal(be.matmul(wv, p), be.matmul(wv, p.x))


# ---- avx512 q8_0 decode: panel and row-by-row gemv chosen by measured speed, bit-identical -----------

_Q8_SCRIPT = r"""
import sys, numpy as np
from tilellm import kernels
from tilellm.quant import GGMLType, quantize
lib = kernels.load("avx512", n_threads=2)
rng = np.random.default_rng(0)
out = {}
for m, k in [(300, 256), (37, 416), (16, 32), (1, 64), (203, 2048), (5, 96), (70, 288)]:
    w = quantize(rng.standard_normal((m, k)).astype(np.float32), GGMLType.Q8_0)
    x = (rng.standard_normal((5, k)) * 3).astype(np.float32)
    for _ in range(20):  # enough chunks for auto to try both paths
        out[f"{m}x{k}"] = lib.gemm(GGMLType.Q8_0, w, k, lib.prepare(GGMLType.Q8_0, x[:1]))
    out[f"{m}x{k}batch"] = lib.gemm(GGMLType.Q8_0, w, k, lib.prepare(GGMLType.Q8_0, x))[:1]
np.savez(sys.argv[1], **out)
"""


@pytest.mark.skipif("avx512" not in RUNNABLE, reason="the avx512 variant does not run here")
def test_q8_0_decode_paths_are_bit_identical(tmp_path):
    """TILELLM_Q8_GEMV=panel / rows force one q8_0 gemv, the default picks per chunk by speed: a token's outputs
    must be the same bits every way, and equal to its row of a batch (the panels' arithmetic)."""
    import os
    import subprocess
    import sys

    got = {}
    for mode in ("panel", "rows", "auto"):
        out = tmp_path / f"{mode}.npz"
        subprocess.run([sys.executable, "-c", _Q8_SCRIPT, str(out)], check=True, timeout=120,
                       env={**os.environ, "TILELLM_Q8_GEMV": mode})
        got[mode] = np.load(out)
    for key in got["panel"].files:
        if key.endswith("batch"):
            continue
        for mode in ("rows", "auto"):
            assert np.array_equal(got[mode][key], got["panel"][key]), (mode, key)
        assert np.array_equal(got["panel"][key], got["panel"][key + "batch"]), key
