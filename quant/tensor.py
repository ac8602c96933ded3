"""TensorView: a typed, zero-copy view of one tensor's bytes inside a mapped GGUF file."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .codec import dequantize
from .types import TYPE_INFO, GGMLType, row_bytes, type_from_any


@dataclass(frozen=True, eq=False)
class TensorView:
    """One tensor: `shape` in GGUF order (ne0 = row length k first), `data` uint8 `[n_rows, row_bytes]`.

    `data` aliases the file mapping (no copy); rows are the unit every kernel consumes (tinyBLAS
    layout: weights row-major, k contiguous).
    """

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    data: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", type_from_any(self.type))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or any(s < 1 for s in self.shape):
            raise ValueError(f"tensor {self.name!r}: invalid shape {self.shape}")
        rb = row_bytes(self.type, self.shape[0])
        n_rows = int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1
        d = self.data
        if d.dtype != np.uint8 or d.ndim != 2 or d.shape != (n_rows, rb):
            raise ValueError(
                f"tensor {self.name!r}: data must be uint8 [{n_rows}, {rb}] for {self.type.name} {self.shape}, "
                f"got {d.dtype} {list(d.shape)}"
            )

    @classmethod
    def from_bytes(cls, name: str, shape: Sequence[int], t: GGMLType, buf: np.ndarray) -> "TensorView":
        """Build a view over a flat uint8 buffer holding exactly this tensor."""
        t = type_from_any(t)
        rb = row_bytes(t, int(shape[0]))
        n_rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        return cls(name, tuple(shape), t, buf.reshape(n_rows, rb))

    @property
    def k(self) -> int:
        """Row length (values per row, GGUF ne0)."""
        return self.shape[0]

    @property
    def n_rows(self) -> int:
        return self.data.shape[0]

    @property
    def row_bytes(self) -> int:
        return self.data.shape[1]

    @property
    def nbytes(self) -> int:
        return self.data.shape[0] * self.data.shape[1]

    @property
    def block_size(self) -> int:
        return TYPE_INFO[self.type].block_size

    def row(self, i: int) -> np.ndarray:
        """Raw bytes of row i (a view)."""
        return self.data[i]

    def rows(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dequantized rows (e.g. token embeddings) as float32 `[len(ids), k]`."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_rows):
            bad = int(ids[(ids < 0) | (ids >= self.n_rows)][0])
            raise IndexError(f"row {bad} out of range for tensor {self.name!r} with {self.n_rows} rows")
        return dequantize(self.data[ids], self.type, self.k)

    def dequantize(self) -> np.ndarray:
        """The whole tensor as float32 `[n_rows, k]`."""
        return dequantize(self.data, self.type, self.k)

    def matrix(self, e: int) -> "TensorView":
        """2-D view of matrix `e` of a 3-D tensor (e.g. one expert of `ffn_*_exps`)."""
        if len(self.shape) != 3:
            raise ValueError(f"tensor {self.name!r} is not 3-D: {self.shape}")
        ne0, ne1, ne2 = self.shape
        if not 0 <= e < ne2:
            raise IndexError(f"matrix {e} out of range for tensor {self.name!r} with {ne2} matrices")
        return TensorView(f"{self.name}[{e}]", (ne0, ne1), self.type, self.data[e * ne1:(e + 1) * ne1])

    def __repr__(self) -> str:
        return f"TensorView({self.name!r}, shape={self.shape}, type={self.type.name})"
