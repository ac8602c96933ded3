"""The reference backend: dequantize the weights, then a numpy matmul summed in float64.

It is the correctness yardstick for every kernel backend and the exact float32 target the
fixtures call `hfdq`. The products are summed in float64 and rounded once to float32, so a row's
result does not depend on how the host's BLAS blocks the batch (a float32 sgemm sums in an order
that changes with the number of rows, and with the CPU it runs on): batched, chunked and
token-by-token evaluation agree to the last bit or two on every machine.
"""
from __future__ import annotations

import numpy as np

from tilellm.quant import DEQUANTIZABLE, GGMLType, TensorView

from .checks import check_activations, check_out
from .protocol import Activations, Backend


class ReferenceBackend(Backend):
    """numpy: dequantize, then `x @ W.T` summed in float64, rounded to float32. Only the required methods."""

    name = "reference"
    weight_types = frozenset(DEQUANTIZABLE)

    def __init__(self, n_threads: int = 1) -> None:
        self.n_threads = n_threads  # numpy's own threads; kept for the interface

    def supports(self, t: GGMLType) -> bool:
        return t in self.weight_types

    def prepare(self, x: np.ndarray, weight_type: GGMLType) -> Activations:
        return Activations(check_activations(x), GGMLType(weight_type), self.name)

    def matmul(self, weight: TensorView, x: np.ndarray | Activations, out: np.ndarray | None = None) -> np.ndarray:
        xa = x.x if isinstance(x, Activations) else x
        xa = check_activations(xa, weight.k)
        res = check_out(out, xa.shape[0], weight.n_rows)
        w = weight.dequantize()
        res[...] = np.matmul(xa.astype(np.float64), w.T.astype(np.float64))
        return res
