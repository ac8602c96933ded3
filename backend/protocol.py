"""The Backend interface: the one class every linear layer of every model goes through.

`Backend` lists every method a backend has. Three are required (`supports`, `prepare`, `matmul`);
the others are optional and their default implementations here take the plain steps with the
required ones and the numpy reference operations (`tilellm.backend.ops`). A backend overrides an
optional method to run it faster (a kernel backend fuses a norm into the activation preparation,
runs q/k/v in one dispatch, or a whole decoder layer in one C call); results stay those of the steps.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tilellm.quant import GGMLType, TensorView
from tilellm.quant.errors import UnsupportedError

from .checks import check_same_shape
from .layer import LayerProgram
from .ops import causal_attention, rms_norm, silu


@dataclass
class Activations:
    """Activations converted once for a weight type and reusable across matmuls (q/k/v, gate/up).

    `x` keeps the float32 input so a weight of another type can still be served (mixed files).
    `payload` is backend specific (a kernel library's prepared buffer, or None).
    """

    x: np.ndarray
    weight_type: GGMLType
    owner: str
    payload: Any = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def k(self) -> int:
        return int(self.x.shape[1])


class LayerPlan:
    """An opaque handle from `Backend.plan_layer`: one layer program checked once, for `decode_layer` calls."""


class Backend(abc.ABC):
    """A matmul provider. `matmul(W, x)` returns x @ W^T as float32 `[n_tokens, m]` (m = W.n_rows).

    `x` is float32 `[n_tokens, k]`, or `Activations` from `prepare` (reused across weights of the
    same type family). Weight types the backend cannot multiply raise `UnsupportedError`.
    """

    name: str  # the registry name ("reference", "avx2", ...)
    weight_types: frozenset[GGMLType]  # every type `matmul` accepts (natively or through a fallback)
    n_threads: int

    # ---- required -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def supports(self, t: GGMLType) -> bool:
        """True if `matmul` accepts weights of type t."""

    @abc.abstractmethod
    def prepare(self, x: np.ndarray, weight_type: GGMLType) -> Activations:
        """x converted once for weights of `weight_type` (reuse it across q/k/v or gate/up)."""

    @abc.abstractmethod
    def matmul(self, weight: TensorView, x: np.ndarray | Activations, out: np.ndarray | None = None) -> np.ndarray:
        """x @ weight^T, float32 [n_tokens, weight.n_rows] (into `out` when given)."""

    # ---- optional: defaults take the plain steps --------------------------------------------------
    def is_native(self, t: GGMLType) -> bool:
        """True if this backend multiplies type-t weights without dequantizing the matrix first (a model may then
        hand it a large matrix whole instead of in row blocks)."""
        return False

    def matmul_many(self, weights: Sequence[TensorView], x: np.ndarray | Activations) -> list[np.ndarray]:
        """[self.matmul(w, x) for w in weights]: the products that share one input (q/k/v, gate/up)."""
        return [self.matmul(w, x) for w in weights]

    def prepare_rms_norm(self, h: np.ndarray, w: np.ndarray, eps: float, weight_type: GGMLType) -> Activations:
        """prepare(rms_norm(h, w, eps), weight_type); the result's .x holds the normalised rows."""
        return self.prepare(rms_norm(h, w, eps), weight_type)

    def prepare_swiglu(self, g: np.ndarray, u: np.ndarray, weight_type: GGMLType) -> Activations:
        """prepare(silu(g) * u, weight_type) (before a down projection); .x holds silu(g) * u."""
        check_same_shape(g, u)
        return self.prepare(silu(g) * u, weight_type)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                  window: int | None = None) -> np.ndarray:
        """Causal grouped-query attention: q [T, H, D], k/v [n_past+T, Hkv, D] -> [T, H, D]; `window`: the
        query at position p sees keys p-window+1..p only."""
        return causal_attention(q, k, v, n_past, scale, window=window)

    def plan_layer(self, program: LayerProgram) -> LayerPlan | None:
        """A plan for running the layer `program` describes one call per step of tokens with `decode_layer`, or
        None: not handled, take the steps (the default)."""
        return None

    def decode_layer(self, plan: LayerPlan, h: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                     positions: Sequence[int] | np.ndarray, slots: Sequence[int] | np.ndarray | None = None) -> None:
        """n tokens through a planned layer: h (float32 [n, n_embd]) updated in place, cos / sin [n, n_rot / 2]
        their rope angles; token j's keys and values written to its cache slot (default 0) at positions[j]. Only
        called with a plan this backend's `plan_layer` returned."""
        raise UnsupportedError(f"backend {self.name!r} has no one-call decode step (plan_layer returns None)")
