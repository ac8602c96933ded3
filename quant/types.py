"""The GGML tensor type table: ids, block sizes and bytes per block (GGUF numbering)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class GGMLType(IntEnum):
    """GGML tensor types, with the ids the GGUF format stores."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40


@dataclass(frozen=True)
class TypeInfo:
    """How one type is stored: `block_size` values packed into `type_size` bytes."""

    type: GGMLType
    name: str
    block_size: int
    type_size: int
    quantized: bool


def _info(t: GGMLType, block: int, size: int) -> TypeInfo:
    return TypeInfo(t, t.name.lower(), block, size, t not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16))


QK_K = 256  # super-block size of the K-quants

TYPE_INFO: dict[GGMLType, TypeInfo] = {
    i.type: i
    for i in (
        _info(GGMLType.F32, 1, 4),
        _info(GGMLType.F16, 1, 2),
        _info(GGMLType.BF16, 1, 2),
        _info(GGMLType.Q4_0, 32, 18),  # d f16, qs u8[16]
        _info(GGMLType.Q4_1, 32, 20),  # d f16, m f16, qs u8[16]
        _info(GGMLType.Q5_0, 32, 22),  # d f16, qh u8[4], qs u8[16]
        _info(GGMLType.Q5_1, 32, 24),  # d f16, m f16, qh u8[4], qs u8[16]
        _info(GGMLType.Q8_0, 32, 34),  # d f16, qs i8[32]
        _info(GGMLType.Q8_1, 32, 36),  # d f16, s f16, qs i8[32]
        _info(GGMLType.Q2_K, QK_K, 84),  # scales u8[16], qs u8[64], d f16, dmin f16
        _info(GGMLType.Q3_K, QK_K, 110),  # hmask u8[32], qs u8[64], scales u8[12], d f16
        _info(GGMLType.Q4_K, QK_K, 144),  # d f16, dmin f16, scales u8[12], qs u8[128]
        _info(GGMLType.Q5_K, QK_K, 176),  # d f16, dmin f16, scales u8[12], qh u8[32], qs u8[128]
        _info(GGMLType.Q6_K, QK_K, 210),  # ql u8[128], qh u8[64], scales i8[16], d f16
        _info(GGMLType.Q8_K, QK_K, 292),  # d f32, qs i8[256], bsums i16[16]
        _info(GGMLType.IQ4_NL, 32, 18),  # d f16, qs u8[16] (q4_0's nibble order): d * KVALUES[nibble]
        _info(GGMLType.IQ4_XS, QK_K, 136),  # d f16, scales_h u16, scales_l u8[4], qs u8[128]
        # the grid / ternary / fp4 types (read through gguf.quants; see codec.py)
        _info(GGMLType.IQ2_XXS, QK_K, 66),
        _info(GGMLType.IQ2_XS, QK_K, 74),
        _info(GGMLType.IQ2_S, QK_K, 82),
        _info(GGMLType.IQ3_XXS, QK_K, 98),
        _info(GGMLType.IQ3_S, QK_K, 110),
        _info(GGMLType.IQ1_S, QK_K, 50),
        _info(GGMLType.IQ1_M, QK_K, 56),
        _info(GGMLType.TQ1_0, QK_K, 54),
        _info(GGMLType.TQ2_0, QK_K, 66),
        _info(GGMLType.MXFP4, 32, 17),  # e8m0 scale u8, qs u8[16] (e2m1 nibbles)
        _info(GGMLType.NVFP4, 64, 36),
    )
}

_BY_NAME = {i.name: i.type for i in TYPE_INFO.values()}


def type_from_any(t: Any) -> GGMLType:
    """Accept a GGMLType, an int id, a name ('q4_0', 'Q4_0') or a gguf enum; raise ValueError otherwise."""
    if isinstance(t, GGMLType):
        return t
    if isinstance(t, str):
        try:
            return _BY_NAME[t.lower()]
        except KeyError:
            raise ValueError(f"unknown tensor type name {t!r}; known: {', '.join(sorted(_BY_NAME))}") from None
    try:
        return GGMLType(int(t))
    except (ValueError, TypeError):
        raise ValueError(f"unknown GGML tensor type {t!r}") from None


def row_bytes(t: Any, k: int) -> int:
    """Bytes of one row of `k` values of type `t`; k must be a multiple of the block size."""
    info = TYPE_INFO[type_from_any(t)]
    if k % info.block_size:
        raise ValueError(f"row length {k} is not a multiple of the {info.name} block size {info.block_size}")
    return k // info.block_size * info.type_size
