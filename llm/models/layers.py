"""The float32 building blocks of the forward pass that only models use: rope, GELU, softmax, biases.

The ones a backend also needs (RMSNorm, SiLU, causal attention) live in `tilellm.backend.ops`.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def add_qkv_biases(layer: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    """The layer's optional q/k/v biases (`bq`/`bk`/`bv`, Qwen2's; None where absent) added in place."""
    for x, b in ((q, layer.bq), (k, layer.bk), (v, layer.bv)):
        if b is not None:
            x += b


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), float32."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    inner = c * (x + np.float32(0.044715) * (x * x * x))
    return np.float32(0.5) * x * (np.float32(1) + np.tanh(inner))


_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) * up bit for bit (gelu_tanh's float32 operations in its order) with one temporary
    instead of ten full-size arrays; overwrites gate (with gate / 2)."""
    t = gate * gate
    t *= gate
    t *= np.float32(0.044715)
    t += gate
    t *= _GELU_C
    np.tanh(t, out=t)
    t += np.float32(1)
    gate *= np.float32(0.5)
    t *= gate
    t *= up
    return t


_GELU_F16_TABLE: np.ndarray | None = None


def gelu_tanh_ggml(x: np.ndarray) -> np.ndarray:
    """GELU as ggml evaluates it (its default GGML_GELU_FP16 build): 0 for x <= -10, x for x >= 10,
    otherwise x rounded to fp16 and looked up in a table of gelu_tanh of every fp16 value, itself
    rounded to fp16. Used only for numerics="ggml" (coarser than gelu_tanh, by design)."""
    global _GELU_F16_TABLE
    if _GELU_F16_TABLE is None:
        h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
        with np.errstate(all="ignore"):
            _GELU_F16_TABLE = gelu_tanh(h).astype(np.float16).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        y = _GELU_F16_TABLE[x.astype(np.float16).view(np.uint16)]
    y = np.where(x >= np.float32(10), x, y)
    return np.where(x <= np.float32(-10), np.float32(0), y).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


class Rope:
    """Rotary position embedding with cached angles.

    mode "norm" rotates adjacent pairs (2i, 2i+1) — what llama.cpp applies to `llama` GGUF files,
    whose q/k weights the converter stored permuted; "neox" rotates (i, i + n_rot/2) (qwen2).
    `freq_factors` divides each frequency (LLaMA-3 `rope_freqs`).
    """

    def __init__(self, n_rot: int, base: float, mode: str = "norm", freq_factors: np.ndarray | None = None) -> None:
        if mode not in ("norm", "neox"):
            raise ValueError(f"unknown rope mode {mode!r}")
        self.n_rot, self.mode = n_rot, mode
        inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
        if freq_factors is not None:
            inv = inv / np.asarray(freq_factors, dtype=np.float64)[: n_rot // 2]
        self.inv_freq = inv

    def tables(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ang = np.asarray(pos, dtype=np.float64)[:, None] * self.inv_freq[None, :]
        return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)

    def span(self, p0: int, p1: int) -> tuple[np.ndarray, np.ndarray]:
        """tables(arange(p0, p1)) as views of tables computed once for positions 0.. (grown by doubling):
        a decoded token then costs two slices instead of a cos and a sin (10-16 us per token on a cold cache)."""
        have = getattr(self, "_span", None)
        if have is None or have[0].shape[0] < p1 or have[2] is not self.inv_freq:  # grown, or frequencies rescaled
            n = max(p1, 2 * (have[0].shape[0] if have is not None else 64))
            have = self._span = (*self.tables(np.arange(n)), self.inv_freq)
        return have[0][p0:p1], have[1][p0:p1]

    def _cis(self, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """cos + i sin as complex64, cached for the last (cos, sin) pair (q and k of every layer share it)."""
        last = getattr(self, "_cis_last", None)
        if last is not None and last[0] is cos and last[1] is sin:
            return last[2]
        cs = np.empty(cos.shape, np.complex64)
        cs.real, cs.imag = cos, sin
        self._cis_last = (cos, sin, cs)
        return cs

    def apply(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x [T, H, D] rotated in place on its first n_rot dims; cos/sin [T, n_rot/2]."""
        r = self.n_rot
        if (self.mode == "norm" and r == x.shape[-1] and x.dtype == np.float32 and x.flags.c_contiguous
                and x.flags.writeable and cos.dtype == np.float32):
            # adjacent pairs (a, b) as complex a + ib times cos + i sin: one in-place ufunc instead of ten
            # (decode calls this twice per layer); numpy may fuse it into FMAs, so results can differ from
            # the four-product form below in the last bit
            x.view(np.complex64).__imul__(self._cis(cos, sin)[:, None, :])
            return x
        c, s = cos[:, None, :], sin[:, None, :]
        if self.mode == "norm":
            a, b = x[..., 0:r:2].copy(), x[..., 1:r:2].copy()
            x[..., 0:r:2] = a * c - b * s
            x[..., 1:r:2] = a * s + b * c
        else:
            h = r // 2
            a, b = x[..., :h].copy(), x[..., h:r].copy()
            x[..., :h] = a * c - b * s
            x[..., h:r] = a * s + b * c
        return x
