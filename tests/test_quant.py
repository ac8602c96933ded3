"""quant/: the type table and the reference codecs, checked against the gguf package."""
import numpy as np
import pytest
from _qblocks import valid_blocks
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

from tilellm.quant import DEQUANTIZABLE, TYPE_INFO, GGMLType, TensorView, dequantize, quantize, row_bytes, type_from_any

ROUND_TRIP = [GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
              GGMLType.Q5_1]


def _data(rng, rows, k):
    x = rng.standard_normal((rows, k)).astype(np.float32) * rng.uniform(0.01, 10, (rows, 1)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block: d = 0 must not divide by zero
    x[1, 5] = 1e-30  # subnormal territory for f16
    return x


def test_type_table_matches_gguf():
    for t, info in TYPE_INFO.items():
        if t == GGMLType.Q8_1:
            continue  # gguf-py lists q8_1 with f32 d and s (40 B); ggml's block_q8_1 has f16 d, s (36 B)
        try:
            q = GGMLQuantizationType(int(t))
        except ValueError:  # newer than the installed gguf (nvfp4: gguf 0.19)
            continue
        block, size = GGML_QUANT_SIZES[q]
        assert (info.block_size, info.type_size) == (block, size), t


def test_type_from_any_and_row_bytes():
    assert type_from_any("Q4_0") is GGMLType.Q4_0
    assert type_from_any(8) is GGMLType.Q8_0
    assert row_bytes("q4_1", 64) == 40
    with pytest.raises(ValueError, match="not a multiple"):
        row_bytes(GGMLType.Q8_0, 33)
    with pytest.raises(ValueError, match="unknown"):
        type_from_any("q9_9")
    with pytest.raises(ValueError, match="unknown"):
        type_from_any(4)  # ids 4 and 5 were removed from GGML


@pytest.mark.parametrize("t", ROUND_TRIP)
def test_quantize_bit_exact_with_gguf(t):
    x = _data(np.random.default_rng(int(t)), 8, 256)
    ours = quantize(x, t)
    theirs = gq.quantize(x, GGMLQuantizationType(int(t)))
    assert ours.shape == (8, row_bytes(t, 256))
    np.testing.assert_array_equal(ours, np.ascontiguousarray(theirs).view(np.uint8).reshape(ours.shape))


QUANTIZED = [t for t in TYPE_INFO if TYPE_INFO[t].quantized]


def test_every_gguf_dequantizable_type_is_known():
    """Every type the installed gguf.quants can dequantize is in the type table and dequantizes here
    (the reference backend's weight types); nothing else is claimed."""
    knows = {GGMLType(int(q)) for q in GGMLQuantizationType
             if (cls := getattr(gq, q.name, None)) is not None and "dequantize_blocks" in vars(cls)}
    assert knows <= set(TYPE_INFO)
    assert knows <= DEQUANTIZABLE
    from tilellm.backend.reference import ReferenceBackend
    assert knows <= ReferenceBackend.weight_types
    for t in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.IQ4_NL, GGMLType.IQ4_XS, GGMLType.IQ2_XXS, GGMLType.TQ2_0,
              GGMLType.MXFP4):
        assert t in DEQUANTIZABLE, t


@pytest.mark.parametrize("t", list(dict.fromkeys(ROUND_TRIP + QUANTIZED)), ids=lambda t: t.name)
def test_dequantize_bit_exact_with_gguf(t):
    if t not in DEQUANTIZABLE:
        pytest.skip(f"the installed gguf cannot dequantize {t.name}")
    rng = np.random.default_rng(100 + int(t))
    info = TYPE_INFO[t]
    if t in (GGMLType.F16, GGMLType.BF16, GGMLType.F32):
        raw = quantize(rng.standard_normal((4, 2)).astype(np.float32), t).reshape(4, -1)
    else:
        # random bytes, but the scale fields finite so the comparison is meaningful
        raw = valid_blocks(t, 4 * 3, rng, mag=2.0).reshape(4, 3 * info.type_size)
    if t in (GGMLType.Q8_1, GGMLType.Q8_K):  # gguf-py has no (matching) codec: check against the layout directly
        ours = dequantize(raw, t)
        blocks = raw.reshape(-1, info.type_size)
        if t == GGMLType.Q8_1:
            d, q = blocks[:, :2].copy().view(np.float16).astype(np.float32), blocks[:, 4:]
        else:
            d, q = blocks[:, :4].copy().view(np.float32), blocks[:, 4:260]
        np.testing.assert_array_equal(ours, (d * q.view(np.int8)).reshape(4, -1))
        return
    ours = dequantize(raw, t)
    assert ours.shape == (4, raw.shape[1] // info.type_size * info.block_size) and ours.dtype == np.float32
    theirs = gq.dequantize(raw, GGMLQuantizationType(int(t)))
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))
    assert np.isfinite(ours).all()
    # TensorView.rows (embeddings) goes the same way
    v = TensorView.from_bytes("w", (ours.shape[1], 4), t, raw.reshape(-1))
    np.testing.assert_array_equal(v.rows([3, 0]), ours[[3, 0]])


# tilellm's own quantizers (gguf.quants has none for these): valid blocks, error within a bound per type
# (relative RMS error over all values: a 2/3/4-bit code of Gaussian data)
OWN_QUANT_RMS = {GGMLType.Q2_K: 0.45, GGMLType.Q3_K: 0.25, GGMLType.IQ4_NL: 0.12, GGMLType.IQ4_XS: 0.12}


@pytest.mark.parametrize("t", list(OWN_QUANT_RMS), ids=lambda t: t.name)
def test_own_quantizers_round_trip(t):
    x = np.random.default_rng(int(t)).standard_normal((16, 512)).astype(np.float32)
    x[0, :256] = 0.0  # an all-zero block
    x[1] *= 1e3
    raw = quantize(x, t)
    assert raw.shape == (16, row_bytes(t, 512)) and raw.dtype == np.uint8
    y = dequantize(raw, t)
    assert np.isfinite(y).all()
    assert not y[0, :256].any()
    rel = np.sqrt(((y - x) ** 2).mean(axis=1) / (x ** 2).mean(axis=1).clip(1e-30))
    assert rel[1:].max() < OWN_QUANT_RMS[t], rel
    # and the blocks are what gguf reads too
    np.testing.assert_array_equal(y, gq.dequantize(raw, GGMLQuantizationType(int(t))).reshape(y.shape))
    # the coarser the code, the larger the error: each type is a real quantizer, not a copy
    assert rel[1:].mean() > 0.01


@pytest.mark.parametrize("t", [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1])
def test_round_trip_error_bounded(t):
    x = np.random.default_rng(7).standard_normal((16, 128)).astype(np.float32)
    y = dequantize(quantize(x, t), t)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
    # worst case per block: half a step, except the clipped end of q4_0/q5_0 (a whole step)
    bound = {GGMLType.Q8_0: amax / 127 * 0.5, GGMLType.Q4_0: amax / 8, GGMLType.Q4_1: amax * 2 / 15 * 0.5,
             GGMLType.Q5_0: amax / 16, GGMLType.Q5_1: amax * 2 / 31 * 0.5}[t]
    err = np.abs((y - x).reshape(-1, 32))
    assert np.all(err <= bound * 1.01 + amax * 2e-3)  # + f16 rounding of the scales


def test_q8_1_sum_field():
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    raw = quantize(x, GGMLType.Q8_1).reshape(-1, 36)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    s = raw[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
    q = raw[:, 4:].view(np.int8).astype(np.float32)
    np.testing.assert_allclose(s, d * q.sum(1), rtol=1e-3)


def test_tensor_view_zero_copy_rows_and_matrix():
    x = np.random.default_rng(1).standard_normal((6, 64)).astype(np.float32)
    buf = quantize(x, GGMLType.Q8_0).reshape(-1)
    v = TensorView.from_bytes("w", (64, 3, 2), GGMLType.Q8_0, buf)
    assert v.k == 64 and v.n_rows == 6 and v.row_bytes == 68
    assert np.shares_memory(v.data, buf)
    np.testing.assert_array_equal(v.rows([4, 1]), dequantize(buf.reshape(6, 68)[[4, 1]], GGMLType.Q8_0))
    m1 = v.matrix(1)
    assert m1.shape == (64, 3) and np.shares_memory(m1.data, buf)
    np.testing.assert_array_equal(m1.dequantize(), v.dequantize()[3:6])
    with pytest.raises(IndexError, match="out of range"):
        v.rows([6])
    with pytest.raises(ValueError, match="must be uint8"):
        TensorView("bad", (64, 5), GGMLType.Q8_0, buf.reshape(6, 68))


def _q8_k_scalar(xb: np.ndarray) -> tuple[float, list[int], list[int]]:
    """One 256-block the way ggml's quantize_row_q8_K_ref does it, element by element in f32:
    first strict maximum of |x| keeps its sign, iscale = -127/max, nearest_int via the
    +12582912.0f trick (round half to even), MIN(127, v), d = 1/iscale."""
    f = np.float32
    amax, vmax = f(0), f(0)
    for v in xb:
        if abs(v) > amax:
            amax, vmax = abs(v), v
    if amax == 0:
        return 0.0, [0] * 256, [0] * 16
    iscale = f(-127) / vmax
    qs = []
    for v in xb:
        t = np.array([f(iscale * v) + f(12582912.0)], np.float32).view(np.int32)[0]
        qs.append(min(127, int((t & 0x007FFFFF) - 0x00400000)))
    return float(f(1) / iscale), qs, [sum(qs[16 * j:16 * j + 16]) for j in range(16)]


def test_q8_k_quantize_matches_ggml_reference_rule():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 512)) * [[0.01], [1.0], [300.0]]).astype(np.float32)
    x[0, :256] = 0.0                       # all-zero block
    x[1, 3] = -9.0                          # negative extreme: d = -max/127 > 0, its quant -127
    x[2, 300] = 2000.0                      # positive extreme: d < 0, its quant -127 too
    x[1, 256:261] = [-127.0, 2.5, 3.5, -2.5, 0.5]  # iscale = 1 exactly: ties go to even
    raw = quantize(x, GGMLType.Q8_K)
    assert raw.shape == (3, 2 * 292) and raw.dtype == np.uint8
    blocks = raw.reshape(-1, 292)
    for bi, xb in enumerate(x.reshape(-1, 256)):
        d, qs, bs = _q8_k_scalar(xb)
        assert blocks[bi, :4].view(np.float32)[0] == np.float32(d)
        np.testing.assert_array_equal(blocks[bi, 4:260].view(np.int8), qs)
        np.testing.assert_array_equal(blocks[bi, 260:].view(np.int16), bs)
    assert blocks[2, :4].view(np.float32)[0] > 0 and blocks[2, 4 + 3].view(np.int8) == -127
    assert blocks[5, :4].view(np.float32)[0] < 0 and blocks[5, 4 + 44].view(np.int8) == -127
    np.testing.assert_array_equal(blocks[3, 4:9].view(np.int8), [-127, 2, 4, -2, 0])  # not 3, 4, -3, 1
    np.testing.assert_array_equal(blocks[0, 4:].view(np.int8), 0)
    # round trip within half a step
    y = dequantize(raw, GGMLType.Q8_K)
    step = np.abs(blocks[:, :4].copy().view(np.float32))
    assert np.all(np.abs(y - x).reshape(-1, 256) <= step * 0.5 * 1.0001 + 1e-30)


def test_type_the_installed_gguf_cannot_read_is_a_clear_error(monkeypatch):
    """A delegated type whose gguf.quants class is missing (an older gguf) is an UnsupportedError naming it."""
    from tilellm.errors import UnsupportedError
    monkeypatch.delattr(gq, "TQ2_0")
    raw = valid_blocks(GGMLType.TQ2_0, 2, np.random.default_rng(0))
    with pytest.raises(UnsupportedError, match="TQ2_0"):
        dequantize(raw, GGMLType.TQ2_0)
