"""Reference quantize / dequantize in numpy for the GGML block formats.

Rows are the unit: `quantize(x, t)` turns float32 `[..., k]` into raw bytes `[..., row_bytes]` and
`dequantize(raw, t)` goes back. The quantizers reproduce ggml's reference rounding (and so
`gguf.quants`) bit for bit; the tests check that.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .errors import UnsupportedError
from .types import QK_K, TYPE_INFO, GGMLType, type_from_any


def _round_away(x: np.ndarray) -> np.ndarray:
    # C roundf: halves go away from zero (numpy's round goes to even).
    return np.trunc(x + np.copysign(np.float32(0.5), x)).astype(np.float32)


def _f16_bytes(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).view(np.uint8)


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _bf16_from_f32(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
    quiet_nan = (u >> 16) | 0x40  # NaN stays NaN, forced quiet
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


def _split_nibbles(qs: np.ndarray) -> np.ndarray:
    """[nb, 16] packed bytes -> [nb, 32] values: low nibbles are elements 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


# ---------------------------------------------------------------- per-type block codecs
# Each takes blocks [nb, block_size] float32 (quantize) or [nb, type_size] uint8 (dequantize).

def _q8_0_quant(b: np.ndarray) -> np.ndarray:
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = _round_away(b * inv).astype(np.int8)
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


def _q8_0_dequant(r: np.ndarray) -> np.ndarray:
    return _f16(r[:, :2]) * r[:, 2:].view(np.int8).astype(np.float32)


def _q8_1_quant(b: np.ndarray) -> np.ndarray:
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = _round_away(b * inv).astype(np.int8)
    s = d * q.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32)  # s = d * sum(q)
    return np.concatenate([_f16_bytes(d), _f16_bytes(s), q.view(np.uint8)], axis=1)


def _q8_1_dequant(r: np.ndarray) -> np.ndarray:
    return _f16(r[:, :2]) * r[:, 4:].view(np.int8).astype(np.float32)


def _q4_0_quant(b: np.ndarray) -> np.ndarray:
    idx = np.abs(b).argmax(axis=1)[:, None]
    vmax = np.take_along_axis(b, idx, axis=1)  # signed value of largest magnitude
    d = vmax / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np.minimum(np.trunc(b * inv + np.float32(8.5)), 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _q4_0_dequant(r: np.ndarray) -> np.ndarray:
    return _f16(r[:, :2]) * (_split_nibbles(r[:, 2:]).astype(np.float32) - 8)


def _min_scale(b: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's min/scale blocks (q4_1, q5_1): per row the min `lo`, the step d = (max - min) / top and its
    inverse (0 where d is 0), float32 columns."""
    lo = b.min(axis=1, keepdims=True)
    hi = b.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(top)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    return lo, d, inv


def _q4_1_quant(b: np.ndarray) -> np.ndarray:
    lo, d, inv = _min_scale(b, 15)
    q = np.minimum(np.trunc((b - lo) * inv + np.float32(0.5)), 15).astype(np.uint8)
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], axis=1)


def _q4_1_dequant(r: np.ndarray) -> np.ndarray:
    return _f16(r[:, :2]) * _split_nibbles(r[:, 4:]).astype(np.float32) + _f16(r[:, 2:4])


def _q5_0_quant(b: np.ndarray) -> np.ndarray:
    idx = np.abs(b).argmax(axis=1)[:, None]
    vmax = np.take_along_axis(b, idx, axis=1)
    d = vmax / np.float32(-16)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np.minimum(np.trunc(b * inv + np.float32(16.5)), 31).astype(np.uint8)
    qh = np.packbits((q >> 4) & 1, axis=1, bitorder="little")  # bit j = bit 4 of element j
    return np.concatenate([_f16_bytes(d), qh, _pack_nibbles(q & 0x0F)], axis=1)


def _high_bits(qh: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(qh), axis=1, bitorder="little")[:, :n]


def _q5_0_dequant(r: np.ndarray) -> np.ndarray:
    q = _split_nibbles(r[:, 6:]) | (_high_bits(r[:, 2:6], 32) << 4)
    return _f16(r[:, :2]) * (q.astype(np.float32) - 16)


def _q5_1_dequant(r: np.ndarray) -> np.ndarray:
    q = _split_nibbles(r[:, 8:]) | (_high_bits(r[:, 4:8], 32) << 4)
    return _f16(r[:, :2]) * q.astype(np.float32) + _f16(r[:, 2:4])


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12-byte 6-bit scale/min field of q4_K/q5_K into [nb, 8] scales and mins."""
    s = s.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k_values(qs: np.ndarray) -> np.ndarray:
    # 4 chunks of 32 bytes: low nibbles -> 32 elements, then high nibbles -> next 32.
    c = qs.reshape(-1, 4, 32)
    return np.stack([c & 0x0F, c >> 4], axis=2).reshape(-1, QK_K)


def _q4_k_dequant(r: np.ndarray) -> np.ndarray:
    d, dmin = _f16(r[:, 0:2]), _f16(r[:, 2:4])
    sc, mn = _k_scales_mins(r[:, 4:16])
    q = _q4_k_values(r[:, 16:144]).astype(np.float32).reshape(-1, 8, 32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(-1, QK_K)


def _q5_k_dequant(r: np.ndarray) -> np.ndarray:
    d, dmin = _f16(r[:, 0:2]), _f16(r[:, 2:4])
    sc, mn = _k_scales_mins(r[:, 4:16])
    qh = r[:, 16:48]
    low = _q4_k_values(r[:, 48:176]).reshape(-1, 8, 32)
    high = np.stack([(qh >> j) & 1 for j in range(8)], axis=1)  # sub-block j takes bit j of qh[l]
    q = (low | (high << 4)).astype(np.float32)
    return ((d * sc)[:, :, None] * q - (dmin * mn)[:, :, None]).reshape(-1, QK_K)


def _q6_k_dequant(r: np.ndarray) -> np.ndarray:
    ql, qh = r[:, 0:128], r[:, 128:192]
    sc = r[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(r[:, 208:210])
    halves = []
    for h in range(2):
        l = ql[:, 64 * h:64 * h + 64]
        hb = qh[:, 32 * h:32 * h + 32]
        halves += [
            (l[:, :32] & 0x0F) | ((hb & 3) << 4),
            (l[:, 32:] & 0x0F) | (((hb >> 2) & 3) << 4),
            (l[:, :32] >> 4) | (((hb >> 4) & 3) << 4),
            (l[:, 32:] >> 4) | (((hb >> 6) & 3) << 4),
        ]
    q = np.concatenate(halves, axis=1).astype(np.float32) - 32
    return (d * np.repeat(sc, 16, axis=1)) * q


def _q8_k_dequant(r: np.ndarray) -> np.ndarray:
    d = np.ascontiguousarray(r[:, 0:4]).view(np.float32)
    return d * r[:, 4:260].view(np.int8).astype(np.float32)


def _q8_k_quant(b: np.ndarray) -> np.ndarray:
    """ggml's reference q8_K (quantize_row_q8_K_ref): per 256 values, the signed value of largest |x|
    `vmax` gives iscale = -127/vmax (f32), q = nearest_int(iscale*x) (round half to even, as the
    +1.5*2^23 trick does), capped at 127; d = 1/iscale (f32); bsums = sums of 16 quants (int16).
    An all-zero block gets d = 0, q = 0, bsums = 0."""
    idx = np.abs(b).argmax(axis=1)[:, None]  # first index of the largest |x| (ggml: strict >)
    vmax = np.take_along_axis(b, idx, axis=1)
    zero = np.abs(vmax) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(zero, np.float32(0), np.float32(-127) / np.where(zero, np.float32(1), vmax))
        iscale = iscale.astype(np.float32)
        v = (b * iscale).astype(np.float32)
        q = np.rint(np.clip(np.nan_to_num(v, nan=0.0), -127, 127)).astype(np.int8)
        d = np.where(zero, np.float32(0), np.float32(1) / np.where(zero, np.float32(1), iscale)).astype(np.float32)
    bsums = q.reshape(-1, 16, 16).astype(np.int16).sum(axis=2, dtype=np.int16)
    return np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)], axis=1)


# ---- q5_1 (ggml's reference quantizer, so gguf.quants' too) -------------------------------------

def _q5_1_quant(b: np.ndarray) -> np.ndarray:
    lo, d, inv = _min_scale(b, 31)
    q = np.clip(np.trunc((b - lo) * inv + np.float32(0.5)), 0, 31).astype(np.uint8)
    qh = np.packbits((q >> 4) & 1, axis=1, bitorder="little")
    return np.concatenate([_f16_bytes(d), _f16_bytes(lo), qh, _pack_nibbles(q & 0x0F)], axis=1)


# ---- q2_K / q3_K --------------------------------------------------------------------------------
# Both store 2-bit quants the same way: element 128h + 32s + l is bits 2s..2s+1 of qs[32h + l].

def _k2_values(qs: np.ndarray) -> np.ndarray:
    """[nb, 64] bytes -> [nb, 256] 2-bit values in element order."""
    c = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (c & 3).reshape(-1, QK_K)


def _k2_pack(q: np.ndarray) -> np.ndarray:
    c = q.reshape(-1, 2, 4, 32).astype(np.uint8) << np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return np.bitwise_or.reduce(c, axis=2).reshape(-1, 64)


def _q2_k_dequant(r: np.ndarray) -> np.ndarray:
    sc, qs = r[:, 0:16], r[:, 16:80]
    d, dmin = _f16(r[:, 80:82]), _f16(r[:, 82:84])
    dl = (d * (sc & 0x0F).astype(np.float32))[:, :, None]
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
    q = _k2_values(qs).reshape(-1, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(-1, QK_K)


def _q3_k_scales(s: np.ndarray) -> np.ndarray:
    """The 12-byte field of q3_K -> [nb, 16] signed 6-bit scales (stored + 32)."""
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
    high = (s[:, 8:12][:, None, :] >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3  # [nb, 4 (j//4), 4 (j%4)]
    return (low | (high.reshape(-1, 16) << 4)).astype(np.int16) - 32


def _q3_k_dequant(r: np.ndarray) -> np.ndarray:
    hmask, qs, d = r[:, 0:32], r[:, 32:96], _f16(r[:, 108:110])
    dl = (d * _q3_k_scales(r[:, 96:108]).astype(np.float32))[:, :, None]
    # bit i of hmask[l] belongs to element 32i + l; a clear bit subtracts 4
    hb = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    q = _k2_values(qs).astype(np.int8) - ((1 - hb.reshape(-1, QK_K)) << 2).astype(np.int8)
    return (dl * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, QK_K)


# ---- iq4_nl / iq4_xs: 4-bit indices into one non-linear table -----------------------------------
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)


def _iq4_nl_dequant(r: np.ndarray) -> np.ndarray:
    return _f16(r[:, :2]) * IQ4_VALUES[_split_nibbles(r[:, 2:])].astype(np.float32)


def _iq4_xs_scales(r: np.ndarray) -> np.ndarray:
    """[nb, 8] signed sub-block scales of iq4_xs: 4 low bits from scales_l, 2 high bits from scales_h."""
    sh = np.ascontiguousarray(r[:, 2:4]).view(np.uint16).astype(np.int32)  # [nb, 1]
    sl = r[:, 4:8]
    low = np.stack([sl & 0x0F, sl >> 4], axis=2).reshape(-1, 8).astype(np.int32)
    high = (sh >> (2 * np.arange(8))) & 3
    return (low | (high << 4)) - 32


def _iq4_xs_dequant(r: np.ndarray) -> np.ndarray:
    dl = (_f16(r[:, 0:2]) * _iq4_xs_scales(r).astype(np.float32))[:, :, None]
    q = IQ4_VALUES[_split_nibbles(r[:, 8:136].reshape(-1, 16))].astype(np.float32).reshape(-1, 8, 32)
    return (dl * q).reshape(-1, QK_K)


# ---- quantizers for the types gguf.quants cannot make (not ggml's search; see _fit_levels) --------

def _nearest_level(v: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted `levels` to each value of v."""
    mid = (levels[1:] + levels[:-1]) * np.float32(0.5)
    return np.searchsorted(mid, v).astype(np.uint8)


def _fit_levels(x: np.ndarray, levels: np.ndarray, both_ends: bool = False,
                ntry: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per row of x, a scale s and level indices with x ~ s * levels[idx]: the extreme value is mapped to
    the lowest level (or either end: `both_ends`) nudged by up to ±ntry tenths of a unit, the indices are
    picked for that scale, s is refitted by least squares, and the candidate with the smallest squared
    error is kept (ggml's idea for iq4_nl, without importance weights). Returns s [n] float32, idx [n, g]
    uint8."""
    x = x.astype(np.float32)
    amax_i = np.abs(x).argmax(axis=1)
    vmax = x[np.arange(len(x)), amax_i]
    best_err = np.full(len(x), np.inf, np.float64)
    best_s = np.zeros(len(x), np.float32)
    best_i = np.zeros(x.shape, np.uint8)
    lv = levels.astype(np.float32)
    ends = [lv[0], lv[-1]] if both_ends else [lv[0]]
    for end in ends:
        for t in range(-ntry, ntry + 1):
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = np.where(vmax != 0, (end + np.float32(0.1 * t)) / vmax, 0).astype(np.float32)
            idx = _nearest_level(x * inv[:, None], lv)
            v = lv[idx].astype(np.float64)
            sq = (v * v).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where(sq > 0, (x * v).sum(axis=1) / sq, 0.0)
            err = ((x - s[:, None] * v) ** 2).sum(axis=1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s = np.where(better, s, best_s).astype(np.float32)
            best_i[better] = idx[better]
    return best_s, best_i


def _requant(x: np.ndarray, scale: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Level indices of x for a fixed (already rounded) scale per row; 0 scale -> the level nearest 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(scale != 0, np.float32(1) / scale, 0).astype(np.float32)
    return _nearest_level(x * inv[:, None], levels.astype(np.float32))


def _round_f16(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).astype(np.float32)


def _iq4_nl_quant(b: np.ndarray) -> np.ndarray:
    s, _ = _fit_levels(b, IQ4_VALUES)
    d = _round_f16(s)
    idx = _requant(b, d, IQ4_VALUES)
    return np.concatenate([_f16_bytes(d[:, None]), _pack_nibbles(idx)], axis=1)


def _signed6(scales: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Scales [nb, j] -> (d [nb] f16-rounded, l [nb, j] int in [-top, top-1]) with scale ~ d * l: the scale of
    largest magnitude maps to -top, as ggml does."""
    i = np.abs(scales).argmax(axis=1)
    smax = scales[np.arange(len(scales)), i]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(smax != 0, np.float32(-top) / smax, 0).astype(np.float32)
        d = np.where(inv != 0, np.float32(1) / inv, 0).astype(np.float32)
    lv = np.clip(_round_away(scales * inv[:, None]), -top, top - 1).astype(np.int16)
    return _round_f16(d), lv


def _iq4_xs_quant(b: np.ndarray) -> np.ndarray:
    sub = b.reshape(-1, 32)
    s, _ = _fit_levels(sub, IQ4_VALUES)
    d, ls = _signed6(s.reshape(-1, 8), 32)
    dl = (d[:, None] * ls.astype(np.float32)).reshape(-1)
    idx = _requant(sub, dl, IQ4_VALUES).reshape(-1, 32)
    u = (ls + 32).astype(np.uint16)
    sh = np.bitwise_or.reduce((u >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1).astype(np.uint16)
    ul = (u & 0x0F).astype(np.uint8).reshape(-1, 4, 2)
    sl = ul[:, :, 0] | (ul[:, :, 1] << 4)
    qs = _pack_nibbles(idx).reshape(-1, 128)
    return np.concatenate([_f16_bytes(d[:, None]), sh[:, None].view(np.uint8), sl, qs], axis=1)


_Q3_LEVELS = np.arange(-4, 4, dtype=np.float32)
_Q2_LEVELS = np.arange(0, 4, dtype=np.float32)


def _q3_k_quant(b: np.ndarray) -> np.ndarray:
    g = b.reshape(-1, 16)
    s, _ = _fit_levels(g, _Q3_LEVELS, both_ends=True)
    d, ls = _signed6(s.reshape(-1, 16), 32)
    dl = (d[:, None] * ls.astype(np.float32)).reshape(-1)
    u = _requant(g, dl, _Q3_LEVELS).reshape(-1, QK_K)  # q + 4, 0..7
    hb = (u >> 2).reshape(-1, 8, 32)  # element 32i + l -> bit i of hmask[l]
    hmask = np.bitwise_or.reduce(hb << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1).astype(np.uint8)
    us = (ls + 32).astype(np.uint8)  # [nb, 16]
    sc = np.zeros((len(us), 12), np.uint8)
    sc[:, 0:8] = (us[:, 0:8] & 0x0F) | ((us[:, 8:16] & 0x0F) << 4)
    hi = (us >> 4).reshape(-1, 4, 4)  # [nb, j//4, j%4]
    sc[:, 8:12] = np.bitwise_or.reduce(hi << (2 * np.arange(4, dtype=np.uint8)).reshape(1, 4, 1), axis=1)
    return np.concatenate([hmask, _k2_pack(u & 3), sc, _f16_bytes(d[:, None])], axis=1)


def _q2_k_quant(b: np.ndarray) -> np.ndarray:
    """Per 16 values x ~ dl*q - ml with q in 0..3, dl = d*sc, ml = dmin*m (4-bit sc, m): the group's range
    (its minimum capped at 0) in 3 steps; then sc and m on the super-block scales, and q refitted."""
    g = b.reshape(-1, 16)
    mn = np.minimum(g.min(axis=1), 0)
    rng_ = (g.max(axis=1) - mn) / np.float32(3)
    sc_f, mn_f = rng_.reshape(-1, 16), (-mn).reshape(-1, 16)

    def four_bit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = v.max(axis=1)
        dd = _round_f16(top / np.float32(15))
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(dd > 0, np.float32(1) / dd, 0).astype(np.float32)
        return dd, np.clip(_round_away(v * inv[:, None]), 0, 15).astype(np.uint8)

    d, sc = four_bit(sc_f)
    dmin, m = four_bit(mn_f)
    dl = (d[:, None] * sc.astype(np.float32)).reshape(-1)
    ml = (dmin[:, None] * m.astype(np.float32)).reshape(-1)
    q = _requant(g + ml[:, None], dl, _Q2_LEVELS).reshape(-1, QK_K)
    return np.concatenate([sc | (m << 4), _k2_pack(q), _f16_bytes(d[:, None]), _f16_bytes(dmin[:, None])], axis=1)


_QUANT = {
    GGMLType.Q8_0: _q8_0_quant,
    GGMLType.Q8_1: _q8_1_quant,
    GGMLType.Q4_0: _q4_0_quant,
    GGMLType.Q4_1: _q4_1_quant,
    GGMLType.Q5_0: _q5_0_quant,
    GGMLType.Q5_1: _q5_1_quant,
    GGMLType.Q8_K: _q8_k_quant,
    GGMLType.Q2_K: _q2_k_quant,
    GGMLType.Q3_K: _q3_k_quant,
    GGMLType.IQ4_NL: _iq4_nl_quant,
    GGMLType.IQ4_XS: _iq4_xs_quant,
}
_DEQUANT = {
    GGMLType.Q8_0: _q8_0_dequant,
    GGMLType.Q8_1: _q8_1_dequant,
    GGMLType.Q4_0: _q4_0_dequant,
    GGMLType.Q4_1: _q4_1_dequant,
    GGMLType.Q5_0: _q5_0_dequant,
    GGMLType.Q5_1: _q5_1_dequant,
    GGMLType.Q4_K: _q4_k_dequant,
    GGMLType.Q5_K: _q5_k_dequant,
    GGMLType.Q6_K: _q6_k_dequant,
    GGMLType.Q8_K: _q8_k_dequant,
    GGMLType.Q2_K: _q2_k_dequant,
    GGMLType.Q3_K: _q3_k_dequant,
    GGMLType.IQ4_NL: _iq4_nl_dequant,
    GGMLType.IQ4_XS: _iq4_xs_dequant,
}
# Quantizers that are ggml's reference rounding (bit-exact with gguf.quants where it has them); the
# others in _QUANT (q2_K, q3_K, iq4_nl, iq4_xs) are tilellm's own (_fit_levels): valid blocks of that
# type with a small error, not what llama-quantize would write.
GGML_EXACT_QUANT = frozenset({GGMLType.Q8_0, GGMLType.Q8_1, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
                              GGMLType.Q5_1, GGMLType.Q8_K})

# Types read through gguf.quants (grids, ternary, fp4): its numpy dequantizers are the reference, so
# delegating is bit-exact by construction. gguf is imported on first use only (it costs ~0.3 s); a gguf
# too old for one of them (nvfp4 needs 0.19) is a clear UnsupportedError then.
_VIA_GGUF = frozenset({GGMLType.IQ2_XXS, GGMLType.IQ2_XS, GGMLType.IQ2_S, GGMLType.IQ3_XXS, GGMLType.IQ3_S,
                       GGMLType.IQ1_S, GGMLType.IQ1_M, GGMLType.TQ1_0, GGMLType.TQ2_0, GGMLType.MXFP4,
                       GGMLType.NVFP4})


def _via_gguf(flat: np.ndarray, t: GGMLType) -> np.ndarray:
    try:
        import gguf
        from gguf import quants as gq

        qt = gguf.GGMLQuantizationType(int(t))
        cls = getattr(gq, t.name)
        if "dequantize_blocks" not in vars(cls):
            raise AttributeError(t.name)
    except (ImportError, ValueError, AttributeError):
        version = getattr(sys.modules.get("gguf"), "__version__", None) or "not installed"
        raise UnsupportedError(f"reading {t.name} tensors needs a gguf package that dequantizes it "
                               f"(gguf {version} does not)") from None
    with np.errstate(all="ignore"):  # any bit pattern is a block; inf/nan scales just give inf/nan values
        return np.asarray(gq.dequantize(flat, qt), dtype=np.float32)


_CHUNK_VALUES = 1 << 20
QUANTIZABLE = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16, *_QUANT})
DEQUANTIZABLE = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16, *_DEQUANT, *_VIA_GGUF})


def quantize(x: np.ndarray, t: Any) -> np.ndarray:
    """Quantize rows of float32 `x` ([..., k]) to type `t`; returns uint8 `[..., row_bytes]`."""
    t = type_from_any(t)
    x = np.ascontiguousarray(x, dtype=np.float32)
    info = TYPE_INFO[t]
    k = x.shape[-1]
    if k % info.block_size:
        raise ValueError(f"row length {k} is not a multiple of the {info.name} block size {info.block_size}")
    lead = x.shape[:-1]
    if t == GGMLType.F32:
        out = x.view(np.uint8)
    elif t == GGMLType.F16:
        out = x.astype(np.float16).view(np.uint8)
    elif t == GGMLType.BF16:
        out = _bf16_from_f32(x).view(np.uint8)
    elif t in _QUANT:
        blocks = x.reshape(-1, info.block_size)
        step = max(1, _CHUNK_VALUES // info.block_size)  # blocks are independent: bound the temporaries
        out = np.concatenate([_QUANT[t](blocks[i:i + step]) for i in range(0, len(blocks), step)]) if len(
            blocks) > step else _QUANT[t](blocks)
    else:
        raise ValueError(f"quantizing to {info.name} is not implemented")
    return out.reshape(*lead, k // info.block_size * info.type_size)


def dequantize(raw: np.ndarray, t: Any, k: int | None = None) -> np.ndarray:
    """Dequantize raw bytes `[..., row_bytes]` of type `t` to float32 `[..., k]`."""
    t = type_from_any(t)
    info = TYPE_INFO[t]
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = np.ascontiguousarray(raw).view(np.uint8)
    nbytes = raw.shape[-1] if raw.ndim else 0
    if nbytes % info.type_size:
        raise ValueError(f"{nbytes} bytes per row is not a whole number of {info.name} blocks ({info.type_size} B)")
    n_out = nbytes // info.type_size * info.block_size
    if k is not None and k != n_out:
        raise ValueError(f"{nbytes} bytes of {info.name} hold {n_out} values per row, not {k}")
    lead = raw.shape[:-1]
    flat = np.ascontiguousarray(raw).reshape(-1, nbytes)
    if t == GGMLType.F32:
        out = flat.view(np.float32).copy()
    elif t == GGMLType.F16:
        out = flat.view(np.float16).astype(np.float32)
    elif t == GGMLType.BF16:
        out = (flat.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif t in _DEQUANT:
        out = _DEQUANT[t](flat.reshape(-1, info.type_size))
    elif t in _VIA_GGUF:
        out = _via_gguf(flat, t)
    else:
        raise ValueError(f"dequantizing {info.name} is not implemented")
    return np.asarray(out, dtype=np.float32).reshape(*lead, n_out)
