"""Argument checks of the numpy side: activations in and results out (the reference backend), SwiGLU operand pairs
(the Backend defaults). The kernel backend does not use them: its KernelLib validates every argument once, at the
Python-C boundary."""
from __future__ import annotations

from typing import Any

import numpy as np

from tilellm.quant.errors import ShapeError


def check_activations(x: Any, k: int | None = None) -> np.ndarray:
    """Validate x as float32 [n_tokens, k] (C-contiguous copy made only if needed)."""
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"activations must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ShapeError(f"activations must be float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ShapeError(f"activations must be 2-D [n_tokens, k] with n_tokens, k >= 1, got shape {list(x.shape)}")
    if k is not None and x.shape[1] != k:
        raise ShapeError(f"activations have k = {x.shape[1]} but the weight rows have k = {k}")
    return np.ascontiguousarray(x)


def check_out(out: np.ndarray | None, n: int, m: int) -> np.ndarray:
    """Validate (or allocate) the float32 C-contiguous writable output [n, m]."""
    if out is None:
        return np.empty((n, m), dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n, m):
        got = f"{out.dtype} {list(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ShapeError(f"out must be float32 [{n}, {m}], got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ShapeError("out must be C-contiguous and writable")
    return out


def check_same_shape(g: Any, u: Any) -> None:
    """Gate and up activations of a SwiGLU must match exactly (numpy would broadcast some mismatches silently)."""
    if getattr(g, "shape", None) != getattr(u, "shape", None):
        raise ShapeError(f"gate and up activations differ in shape: {getattr(g, 'shape', g)} vs "
                         f"{getattr(u, 'shape', u)}")
