"""Validated Python entry point of the C causal attention (tl_attention)."""
from __future__ import annotations

import numpy as np

from tilellm.quant.errors import ShapeError

from ._lib import _byte_span, _check_inside


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
    """Causal GQA attention with the C kernel of KernelLib `kl`; q [T, H, D], k/v [n_past+T, Hkv, D].

    `window` (sliding-window attention): the query at position p sees only keys p-window+1..p.
    """
    if not isinstance(q, np.ndarray) or q.ndim != 3:
        raise ShapeError("q must be a float32 [T, H, D] array")
    T, H, D = q.shape
    if not isinstance(k, np.ndarray) or k.ndim != 3:
        raise ShapeError("k must be a float32 [S, Hkv, D] array")
    S, Hkv = k.shape[0], k.shape[1]
    if not isinstance(v, np.ndarray) or v.ndim != 3:
        raise ShapeError("v must be a float32 [S, Hkv, D] array")
    if isinstance(n_past, bool) or not isinstance(n_past, (int, np.integer)):
        raise ShapeError(f"n_past must be an int, got {type(n_past).__name__}")
    if T < 1 or H < 1 or D < 1 or Hkv < 1 or H % Hkv:
        raise ShapeError(f"bad attention shape: T={T}, H={H}, Hkv={Hkv}, D={D}")
    n_past = int(n_past)
    if n_past < 0 or S != n_past + T or v.shape[0] != S:
        raise ShapeError(f"k/v hold {S}/{v.shape[0]} positions, expected n_past + T = {n_past + T}")
    ldq, ldk, ldv = _rows(q, "q", H, D), _rows(k, "k", Hkv, D), _rows(v, "v", Hkv, D)
    if min(ldq, ldk, ldv) < 0:
        raise ShapeError("attention operands must be 4-byte aligned float32 rows")
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

    def fp(a, writable=False):
        if a.flags.c_contiguous:  # the common case (cache slices, fresh arrays): no view needed
            return ffi.cast("float *", ffi.from_buffer(a, require_writable=writable))
        # the bytes the strided rows cover, from the array's own first byte (reshape(-1) would copy
        # a strided array, and C would then read the copy with the original stride: past its end)
        return ffi.cast("float *", ffi.from_buffer(_byte_span(a), require_writable=writable))

    if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1):
        raise ShapeError(f"window must be None or an integer >= 1, got {window!r}")
    win = 0 if window is None else int(window)
    rc = lib.tl_attention(fp(q), ldq, fp(k), ldk, fp(v), ldv, fp(out, True), H * D, T, S, H, Hkv, D,
                          n_past, win, float(scale), nth)
    if rc != 0:
        raise MemoryError("tl_attention could not allocate its scratch") if rc == 3 else ShapeError(
            f"tl_attention rejected its arguments (status {rc})")
    return out
