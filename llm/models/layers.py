"""The float32 building blocks of the forward pass (everything except the linear layers)."""
from __future__ import annotations

import math

import numpy as np


def _f32(v: float) -> float:
    return float(np.float32(v))


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w, row by row, in float32 (mean: the float32 sum divided by the count in
    float64, as np.mean does), with few temporaries: decode runs several per layer on one-row inputs, where
    numpy's per-call cost dominates."""
    ms = np.add.reduce(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
    if ms.size == 1:  # one row (decode): the same roundings on a Python float, without four ufunc calls
        # (+, /, sqrt in float64 rounded to float32 equal the float32 operations: 53 >= 2 * 24 + 2 bits)
        m = _f32(float(ms.flat[0]) / x.shape[-1])
        v = _f32(m + _f32(eps))
        c = _f32(math.sqrt(v)) if v >= 0 else math.nan  # numpy's nan / inf instead of Python's exceptions
        r = _f32(1.0 / c) if c != 0 else math.inf
        y = x * np.float32(r)
        y *= w
        return y
    np.true_divide(ms, np.intp(x.shape[-1]), out=ms, casting="unsafe")
    ms += np.float32(eps)
    np.sqrt(ms, out=ms)
    np.true_divide(1.0, ms, out=ms)
    y = x * ms
    y *= w
    return y


def silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x / (np.float32(1) + np.exp(-x))


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


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                     chunk: int = 128, window: int | None = None, k_start: int = 0) -> np.ndarray:
    """Grouped-query causal attention, optionally within a sliding window.

    q [T, H, D] for positions n_past..n_past+T-1; k, v [S, Hkv, D] for positions k_start..k_start+S-1
    (normally k_start = 0 and S = n_past+T). With `window`, the query at position p sees only keys at
    positions p-window+1..p (llama.cpp's "standard" sliding window).
    Returns [T, H, D]. Queries go in chunks that only see the keys they may attend to (causality
    halves the work of a long prefill), and operands are contiguous per kv head so every product
    is one BLAS sgemm (a broadcast matmul over transposed views falls back to numpy's slow loop).
    """
    T, H, D = q.shape
    S, Hkv, Dv = v.shape
    g = H // Hkv
    # a new array, never the caller's q (ascontiguousarray would return a view when T == 1)
    qs = q.reshape(T, Hkv, g, D).transpose(1, 2, 0, 3) * np.float32(scale)  # [Hkv, g, T, D]
    kt = np.ascontiguousarray(k.transpose(1, 2, 0))  # [Hkv, D, S]
    vh = np.ascontiguousarray(v.transpose(1, 0, 2))  # [Hkv, S, Dv]
    out = np.empty((T, Hkv, g, Dv), np.float32)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        n = t1 - t0
        s_end = n_past + t1 - k_start  # keys (array index) this chunk can see: [s_beg, s_end)
        s_beg = 0 if window is None else max(0, n_past + t0 - window + 1 - k_start)
        qc = np.ascontiguousarray(qs[:, :, t0:t1]).reshape(Hkv, g * n, D)
        sc = np.matmul(qc, kt[:, :, s_beg:s_end]).reshape(Hkv, g, n, s_end - s_beg)
        if n > 1:  # token t (absolute n_past + t) sees keys up to n_past+t, and none older than window-1 back
            kpos = (k_start + np.arange(s_beg, s_end))[None, :]
            qpos = (n_past + np.arange(t0, t1))[:, None]
            masked = kpos > qpos
            if window is not None:
                masked |= (qpos - kpos) >= window
            sc += np.where(masked, np.float32(-np.inf), np.float32(0))
        sc -= sc.max(axis=-1, keepdims=True)
        np.exp(sc, out=sc)
        sc /= sc.sum(axis=-1, keepdims=True)
        o = np.matmul(sc.reshape(Hkv, g * n, s_end - s_beg), vh[:, s_beg:s_end]).reshape(Hkv, g, n, Dv)
        out[t0:t1] = o.transpose(2, 0, 1, 3)
    return out.reshape(T, H, Dv)
