"""Validated Python entry point of the C causal attention (tl_attention_kv): q in float32, K and V as KV cache
slices of any cache type (tilellm.quant.kv: float32, float16, bf16 as uint16, q8_0 blocks), read directly."""
from __future__ import annotations

from typing import Any

import numpy as np

from tilellm.quant import GGMLType
from tilellm.quant.errors import ShapeError
from tilellm.quant.kv import KV_NAMES, QK, kv_type_of

from ._lib import _byte_span, _check_inside

_KV_ERROR = ("{name} must be a KV cache array [positions, heads, head_dim] of float32, float16, uint16 (bf16) or "
             "q8_0 blocks [positions, heads, head_dim / 32]")


def _kv_rows(a: Any, name: str, heads: int, d: int) -> tuple[GGMLType, int]:
    """Check a K or V operand [S, heads, d values] of a KV cache type whose (heads, d) part is contiguous; its type
    and its row stride in bytes."""
    t = kv_type_of(a) if isinstance(a, np.ndarray) else None
    if t is None or a.ndim != 3:
        raise ShapeError(_KV_ERROR.format(name=name))
    per = QK if t == GGMLType.Q8_0 else 1
    if t == GGMLType.Q8_0 and d % QK:
        raise ShapeError(f"{name} is a q8_0 cache, which needs a head size that is a multiple of {QK} (got {d})")
    if a.shape[1:] != (heads, d // per):
        raise ShapeError(f"{name} ({KV_NAMES[t]}) has shape {list(a.shape)}, expected [*, {heads}, {d // per}]")
    it = a.dtype.itemsize
    if (a.strides[2] != it or a.strides[1] != it * (d // per) or a.strides[0] < it * heads * (d // per)
            or not a.flags.aligned or (t == GGMLType.F32 and a.strides[0] % 4)):
        raise ShapeError(f"{name} must have aligned, contiguous [heads, head_dim] rows (strides {a.strides})")
    return t, int(a.strides[0])


def _rows(a: np.ndarray, name: str, heads: int, d: int) -> int:
    """Check a [tokens, heads, d] float32 array whose (heads, d) part is contiguous; return its row stride."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 3:
        raise ShapeError(f"{name} must be a float32 [tokens, heads, head_dim] array")
    if a.shape[1:] != (heads, d):
        raise ShapeError(f"{name} has shape {list(a.shape)}, expected [*, {heads}, {d}]")
    if a.strides[2] != 4 or a.strides[1] != 4 * d or a.strides[0] < 4 * heads * d or not a.flags.aligned:
        raise ShapeError(f"{name} must have aligned, contiguous [heads, head_dim] rows (strides {a.strides})")
    return a.strides[0] // 4 if a.strides[0] % 4 == 0 else -1


def attention(kl, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
              n_threads: int = 1, out: np.ndarray | None = None, window: int | None = None) -> np.ndarray:
    """Causal GQA attention with the C kernel of KernelLib `kl`; q [T, H, D] float32, k/v [n_past+T, Hkv, D]
    values of a KV cache type (q8_0: [n_past+T, Hkv, D / 32] blocks), read by C as stored.

    `window` (sliding-window attention): the query at position p sees only keys p-window+1..p.
    """
    if not isinstance(q, np.ndarray) or q.ndim != 3:
        raise ShapeError("q must be a float32 [T, H, D] array")
    T, H, D = q.shape
    if not isinstance(k, np.ndarray) or k.ndim != 3:
        raise ShapeError(_KV_ERROR.format(name="k"))
    S, Hkv = k.shape[0], k.shape[1]
    if not isinstance(v, np.ndarray) or v.ndim != 3:
        raise ShapeError(_KV_ERROR.format(name="v"))
    if isinstance(n_past, bool) or not isinstance(n_past, (int, np.integer)):
        raise ShapeError(f"n_past must be an int, got {type(n_past).__name__}")
    if T < 1 or H < 1 or D < 1 or Hkv < 1 or H % Hkv:
        raise ShapeError(f"bad attention shape: T={T}, H={H}, Hkv={Hkv}, D={D}")
    n_past = int(n_past)
    if n_past < 0 or S != n_past + T or v.shape[0] != S:
        raise ShapeError(f"k/v hold {S}/{v.shape[0]} positions, expected n_past + T = {n_past + T}")
    ldq = _rows(q, "q", H, D)
    if ldq < 0:
        raise ShapeError("attention operands must be 4-byte aligned float32 rows")
    (kt, ldk), (vt, ldv) = _kv_rows(k, "k", Hkv, D), _kv_rows(v, "v", Hkv, D)
    if out is None:
        out = np.empty((T, H, D), np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (T, H, D)
          or not out.flags.c_contiguous or not out.flags.writeable or not out.flags.aligned):
        raise ShapeError(f"out must be a writable C-contiguous float32 [{T}, {H}, {D}] array")
    for name, a in (("q", q), ("k", k), ("v", v), ("out", out)):
        _check_inside(a, name)  # as_strided views past their memory
    if any(np.may_share_memory(out, a) for a in (q, k, v)):
        raise ShapeError("out overlaps q, k or v")
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise ShapeError(f"n_threads must be an int, got {type(n_threads).__name__}")
    nth = int(n_threads)
    if not 1 <= nth <= 1024:
        raise ShapeError(f"n_threads must be in 1..1024, got {n_threads}")
    ffi, lib = kl.ffi, kl.lib

    def fp(a, writable=False, ctype="float *"):
        if a.flags.c_contiguous and a.dtype == np.float32:  # the common case (cache slices, fresh arrays)
            return ffi.cast(ctype, ffi.from_buffer(a, require_writable=writable))
        # the bytes the strided rows cover, from the array's own first byte (reshape(-1) would copy
        # a strided array, and C would then read the copy with the original stride: past its end)
        return ffi.cast(ctype, ffi.from_buffer(_byte_span(a), require_writable=writable))

    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1):
        raise ShapeError(f"window must be None or an integer >= 1, got {window!r}")
    win = 0 if window is None else int(window)
    rc = lib.tl_attention_kv(fp(q), ldq, fp(k, ctype="void *"), int(kt), ldk, fp(v, ctype="void *"), int(vt), ldv,
                             fp(out, True), H * D, T, S, H, Hkv, D, n_past, win, float(scale), nth)
    if rc != 0:
        raise MemoryError("tl_attention_kv could not allocate its scratch") if rc == 3 else ShapeError(
            f"tl_attention_kv rejected its arguments (status {rc})")
    return out


def kv_pointer(kl: Any, a: np.ndarray, what: str) -> Any:
    """A C `void *` to a KV cache array's first byte, for a cache C writes and reads whole (a layer program's):
    a KV cache dtype, non-negative strides, its last axis contiguous, writable, inside the memory it views."""
    if not isinstance(a, np.ndarray) or kv_type_of(a) is None or a.ndim < 1:
        raise ShapeError(f"{what} must be a KV cache array (float32, float16, uint16 for bf16, or q8_0 blocks)")
    if (not a.flags.aligned or a.strides[-1] != a.itemsize or any(st < 0 for st in a.strides)
            or not a.flags.writeable):
        raise ShapeError(f"{what} must be an aligned, writable array with contiguous rows (strides {a.strides})")
    _check_inside(a, what)
    return kl.ffi.cast("void *", kl.ffi.from_buffer(_byte_span(a), require_writable=True))
