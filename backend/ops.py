"""The numpy reference operations a backend's default methods fall back on (RMSNorm, SiLU, causal attention).

They sit in the backend layer because `Backend`'s optional methods (fused norm + prepare, fused SwiGLU +
prepare, attention) default to them; the models import them from here too, so both take the same bits.
"""
from __future__ import annotations

import math

import numpy as np

from tilellm.quant.kv import kv_load


def _f32(v: float) -> float:
    """v rounded to float32 (as a Python float)."""
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
    """x * sigmoid(x) in float32 (overflow of exp(-x) gives the right limit, 0)."""
    with np.errstate(over="ignore"):
        return x / (np.float32(1) + np.exp(-x))


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                     chunk: int = 128, window: int | None = None, k_start: int = 0) -> np.ndarray:
    """Grouped-query causal attention, optionally within a sliding window.

    q [T, H, D] for positions n_past..n_past+T-1; k, v [S, Hkv, D] for positions k_start..k_start+S-1
    (normally k_start = 0 and S = n_past+T). With `window`, the query at position p sees only keys at
    positions p-window+1..p (llama.cpp's "standard" sliding window).
    k and v may be KV cache slices of any cache type (tilellm.quant.kv): they are read as float32 first.
    Returns [T, H, D]. Queries go in chunks that only see the keys they may attend to (causality
    halves the work of a long prefill), and operands are contiguous per kv head so every product
    is one BLAS sgemm (a broadcast matmul over transposed views falls back to numpy's slow loop).
    """
    k, v = kv_load(k), kv_load(v)
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
