"""Reference quantize / dequantize in numpy for the GGML block formats.

Rows are the unit: `quantize(x, t)` turns float32 `[..., k]` into raw bytes `[..., row_bytes]` and
`dequantize(raw, t)` goes back. The quantizers reproduce ggml's reference rounding (and so
`gguf.quants`) bit for bit; the tests check that.
"""
from __future__ import annotations

from typing import Any

import numpy as np

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


def _q4_1_quant(b: np.ndarray) -> np.ndarray:
    lo = b.min(axis=1, keepdims=True)
    hi = b.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
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


_QUANT = {
    GGMLType.Q8_0: _q8_0_quant,
    GGMLType.Q8_1: _q8_1_quant,
    GGMLType.Q4_0: _q4_0_quant,
    GGMLType.Q4_1: _q4_1_quant,
    GGMLType.Q5_0: _q5_0_quant,
    GGMLType.Q8_K: _q8_k_quant,
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
}

QUANTIZABLE = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16, *_QUANT})
DEQUANTIZABLE = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16, *_DEQUANT})


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
        out = _QUANT[t](x.reshape(-1, info.block_size))
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
    else:
        raise ValueError(f"dequantizing {info.name} is not implemented")
    return np.asarray(out, dtype=np.float32).reshape(*lead, n_out)
