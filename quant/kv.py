"""KV cache storage types: f32, f16, bf16 and q8_0 (llama.cpp's `-ctk` / `-ctv`), as numpy arrays.

A cache array's dtype says its type, so a slice carries it to whatever reads it:

| type | dtype | shape for `[..., D]` values |
|---|---|---|
| f32 | float32 | `[..., D]` |
| f16 | float16 | `[..., D]` |
| bf16 | uint16 (the top half of the binary32) | `[..., D]` |
| q8_0 | `Q8_0_BLOCK` (34 bytes: f16 scale, 32 int8) | `[..., D / 32]` (ggml's block layout; D % 32 == 0) |

`kv_store` rounds float32 values into a cache slice (f16 and bf16 to nearest even, q8_0 as ggml's reference
quantizer quantize_row_q8_0_ref: d = amax / 127,
q = roundf(x * (1 / d))); `kv_load` gives a slice's values back as float32. The C
kernels read the same bytes (kernels/src/kv.h) and write them the same way.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .codec import _bf16_from_f32, dequantize
from .errors import UnsupportedError
from .types import GGMLType

KV_TYPES: dict[str, GGMLType] = {"f32": GGMLType.F32, "f16": GGMLType.F16, "bf16": GGMLType.BF16,
                                 "q8_0": GGMLType.Q8_0}
KV_NAMES: dict[GGMLType, str] = {t: n for n, t in KV_TYPES.items()}
DEFAULT_KV_TYPE = GGMLType.F16  # llama.cpp's default
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])  # itemsize 34, ggml's block_q8_0
QK = 32


def kv_type(t: Any, what: str = "type_k") -> GGMLType:
    """A KV cache type from a name ("f16", any case), a ggml type id (1) or a GGMLType; UnsupportedError naming
    `what` and the accepted values otherwise."""
    if isinstance(t, str) and t.lower() in KV_TYPES:
        return KV_TYPES[t.lower()]
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool) and int(t) in {int(v) for v in KV_NAMES}:
        return GGMLType(int(t))
    raise UnsupportedError(f"{what} must be one of {', '.join(KV_TYPES)} (or ggml type ids "
                           f"{', '.join(str(int(v)) for v in KV_NAMES)}), got {t!r}")


def kv_name(t: GGMLType) -> str:
    return KV_NAMES[GGMLType(t)]


_DTYPES: dict[GGMLType, np.dtype] = {GGMLType.F32: np.dtype(np.float32), GGMLType.F16: np.dtype(np.float16),
                                     GGMLType.BF16: np.dtype(np.uint16), GGMLType.Q8_0: Q8_0_BLOCK}


def kv_dtype(t: GGMLType) -> np.dtype:
    """The numpy dtype of a cache of type t."""
    return _DTYPES[GGMLType(t)]


def kv_type_of(a: np.ndarray) -> GGMLType | None:
    """The cache type an array's dtype stands for, or None."""
    for t in KV_NAMES:
        if a.dtype == kv_dtype(t):
            return t
    return None


def kv_check_dims(t: GGMLType, dims: dict[str, int], what: str = "type_k") -> None:
    """UnsupportedError if type t cannot store rows of these sizes (q8_0: multiples of its 32-value blocks, as
    llama.cpp requires of a quantized cache)."""
    if GGMLType(t) != GGMLType.Q8_0:
        return
    bad = {k: v for k, v in dims.items() if v % QK}
    if bad:
        parts = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise UnsupportedError(f"{what} q8_0 stores blocks of {QK} values, which do not divide this model's {parts}; "
                               "use f32, f16 or bf16")


def kv_shape(shape: tuple[int, ...], t: GGMLType) -> tuple[int, ...]:
    """The array shape holding `shape` values (the last axis in values) as type t."""
    if GGMLType(t) == GGMLType.Q8_0:
        if shape[-1] % QK:
            raise UnsupportedError(f"a q8_0 cache row of {shape[-1]} values is not a multiple of {QK}")
        return (*shape[:-1], shape[-1] // QK)
    return tuple(shape)


def kv_zeros(shape: tuple[int, ...], t: GGMLType) -> np.ndarray:
    """A zeroed cache of `shape` values (last axis in values) of type t (pages are mapped lazily)."""
    return np.zeros(kv_shape(shape, t), kv_dtype(t))


def kv_nbytes(n_values: int, t: GGMLType) -> int:
    """Bytes of `n_values` values stored as type t."""
    t = GGMLType(t)
    if t == GGMLType.Q8_0:
        return -(-int(n_values) // QK) * Q8_0_BLOCK.itemsize
    return int(n_values) * (4 if t == GGMLType.F32 else 2)


def kv_cols(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The values lo..hi-1 of the last axis of cache `a` (block-aligned for q8_0)."""
    if a.dtype == Q8_0_BLOCK:
        if lo % QK or hi % QK:
            raise UnsupportedError(f"q8_0 cache columns {lo}..{hi} are not block aligned")
        return a[..., lo // QK:hi // QK]
    return a[..., lo:hi]


def kv_encode(x: np.ndarray, t: GGMLType) -> np.ndarray:
    """float32 values [..., D] as cache type t (the array kv_store writes)."""
    t = GGMLType(t)
    x = np.asarray(x, dtype=np.float32)
    if t == GGMLType.F32:
        return x
    if t == GGMLType.F16:
        with np.errstate(over="ignore"):
            return x.astype(np.float16)
    if t == GGMLType.BF16:
        return _bf16_from_f32(x).reshape(x.shape)
    if x.shape[-1] % QK:
        raise UnsupportedError(f"a q8_0 cache row of {x.shape[-1]} values is not a multiple of {QK}")
    blocks = x.reshape(-1, QK)
    out = np.empty(blocks.shape[0], Q8_0_BLOCK)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
        v = blocks * inv
        t = np.trunc(v)  # C's roundf (halves away from zero), exactly: v - trunc(v) is exact in float32
        q = t + np.copysign((np.abs(v - t) >= np.float32(0.5)).astype(np.float32), v)
        out["qs"] = np.where(np.isnan(q), np.float32(0), q).astype(np.int8)  # nan: 0, as the C store
    out["d"] = d[:, 0].astype(np.float16)
    return out.reshape(*x.shape[:-1], x.shape[-1] // QK)


def kv_store(dst: np.ndarray, x: np.ndarray) -> None:
    """dst[...] = x (float32 values) rounded to dst's cache type."""
    t = kv_type_of(dst)
    if t is None:
        raise UnsupportedError(f"not a KV cache array: dtype {dst.dtype}")
    dst[...] = kv_encode(x, t)


def kv_load(a: np.ndarray) -> np.ndarray:
    """A cache slice's values as float32 `[..., D]` (a float32 slice is returned as it is)."""
    if a.dtype == np.float32:
        return a
    if a.dtype == np.float16:
        return a.astype(np.float32)
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    if a.dtype == Q8_0_BLOCK:
        raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1, Q8_0_BLOCK.itemsize)
        return dequantize(raw, GGMLType.Q8_0, QK).reshape(*a.shape[:-1], a.shape[-1] * QK)
    raise UnsupportedError(f"not a KV cache array: dtype {a.dtype}")
