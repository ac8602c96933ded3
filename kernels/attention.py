"""Validated Python entry point of the C causal attention (tl_attention)."""
from __future__ import annotations

import numpy as np

from tilellm.errors import ShapeError


def _rows(a: np.ndarray, name: str, heads: int, d: int) -> int:
    """Check a [tokens, heads, d] float32 array whose (heads, d) part is contiguous; return its row stride."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 3:
        raise ShapeError(f"{name} must be a float32 [tokens, heads, head_dim] array")
    if a.shape[1:] != (heads, d):
        raise ShapeError(f"{name} has shape {list(a.shape)}, expected [*, {heads}, {d}]")
    if a.strides[2] != 4 or a.strides[1] != 4 * d or a.strides[0] < 4 * heads * d:
        raise ShapeError(f"{name} must have contiguous [heads, head_dim] rows (strides {a.strides})")
    return a.strides[0] // 4 if a.strides[0] % 4 == 0 else -1


def attention(kl, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
              n_threads: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Causal GQA attention with the C kernel of KernelLib `kl`; q [T, H, D], k/v [n_past+T, Hkv, D]."""
    if not isinstance(q, np.ndarray) or q.ndim != 3:
        raise ShapeError("q must be a float32 [T, H, D] array")
    T, H, D = q.shape
    if not isinstance(k, np.ndarray) or k.ndim != 3:
        raise ShapeError("k must be a float32 [S, Hkv, D] array")
    S, Hkv = k.shape[0], k.shape[1]
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
    elif out.dtype != np.float32 or out.shape != (T, H, D) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ShapeError(f"out must be a writable C-contiguous float32 [{T}, {H}, {D}] array")
    nth = int(n_threads)
    if not 1 <= nth <= 1024:
        raise ShapeError(f"n_threads must be in 1..1024, got {n_threads}")
    ffi, lib = kl.ffi, kl.lib

    def fp(a, writable=False):
        # from_buffer needs the span the strided rows cover, starting at the array's first byte
        span = np.lib.stride_tricks.as_strided(a.reshape(-1)[:1].view(np.uint8), shape=(
            (a.shape[0] - 1) * a.strides[0] + a.shape[1] * a.shape[2] * 4,), strides=(1,))
        return ffi.cast("float *", ffi.from_buffer(span, require_writable=writable))

    rc = lib.tl_attention(fp(q), ldq, fp(k), ldk, fp(v), ldv, fp(out, True), H * D, T, S, H, Hkv, D,
                          n_past, float(scale), nth)
    if rc != 0:
        raise MemoryError("tl_attention could not allocate its scratch") if rc == 3 else ShapeError(
            f"tl_attention rejected its arguments (status {rc})")
    return out
