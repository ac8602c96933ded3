"""The Backend protocol: the one narrow interface every linear layer goes through."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tilellm.errors import ShapeError
from tilellm.quant import GGMLType, TensorView


@dataclass
class Prepared:
    """Activations converted once for a weight type and reusable across matmuls (q/k/v, gate/up).

    `x` keeps the float32 input so a weight of another type can still be served (mixed files).
    `payload` is backend specific (a kernel library's quantized buffer, or None).
    """

    x: np.ndarray
    weight_type: GGMLType
    owner: str
    payload: Any = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def k(self) -> int:
        return self.x.shape[1]


@runtime_checkable
class Backend(Protocol):
    """A matmul provider. `matmul(W, x)` returns x @ W^T: float32 `[n_tokens, m]`."""

    name: str
    weight_types: frozenset[GGMLType]
    n_threads: int

    def supports(self, t: GGMLType) -> bool: ...

    def prepare(self, x: np.ndarray, weight_type: GGMLType) -> Prepared: ...

    def matmul(self, weight: TensorView, x: "np.ndarray | Prepared", out: np.ndarray | None = None) -> np.ndarray: ...


def matmul_many(backend: Backend, weights: "list[TensorView]", x: "np.ndarray | Prepared") -> list[np.ndarray]:
    """[backend.matmul(w, x) for w in weights]: the matmuls that share one input (q/k/v, gate/up). Uses
    the backend's own `matmul_many` when it has one (a kernel backend runs them as one C call, one thread
    dispatch for a decode step), else one matmul each. Same results either way."""
    many = getattr(backend, "matmul_many", None)
    if many is not None:
        return many(weights, x)
    return [backend.matmul(w, x) for w in weights]


def prepare_normed(backend: Backend, h: np.ndarray, w: np.ndarray, eps: float, weight_type: GGMLType) -> Prepared:
    """backend.prepare(rms_norm(h, w, eps), weight_type), fused when the backend offers `prepare_rms_norm`
    (one C call per decode step instead of a numpy norm and a prepare). The fused norm sums the squares
    in double, so its last bits can differ from numpy's float32 sum."""
    fused = getattr(backend, "prepare_rms_norm", None)
    if fused is not None:
        return fused(h, w, eps, weight_type)
    from tilellm.llm.layers import rms_norm

    return backend.prepare(rms_norm(h, w, eps), weight_type)


def prepare_swiglu(backend: Backend, g: np.ndarray, u: np.ndarray, weight_type: GGMLType) -> Prepared:
    """backend.prepare(silu(g) * u, weight_type), fused when the backend offers `prepare_swiglu` (its exp is a
    polynomial good to a few ulp, not numpy's)."""
    if getattr(g, "shape", None) != getattr(u, "shape", None):  # numpy would broadcast some mismatches silently
        raise ShapeError(f"gate and up activations differ in shape: {getattr(g, 'shape', g)} vs {getattr(u, 'shape', u)}")
    fused = getattr(backend, "prepare_swiglu", None)
    if fused is not None:
        return fused(g, u, weight_type)
    from tilellm.llm.layers import silu

    return backend.prepare(silu(g) * u, weight_type)


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
