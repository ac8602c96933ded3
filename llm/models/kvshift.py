"""Context shift: drop a span of cached positions and move the later ones down, re-rotating their rope'd keys.

llama.cpp's context shift (`llama_memory_seq_rm` then `llama_memory_seq_add` by -n_discard) on this engine's KV
caches. RoPE turns pair i of a key at position p by the angle p * inv_freq[i], so a key cached at p and moved to
p - n_discard needs one more turn by -n_discard * inv_freq[i] — the same angle for every moved row, with the
layer's own frequencies (YaRN, LongRoPE factors, Gemma 3's local and global bases are all in `inv_freq`).

A model names where its rope'd keys are (`RopedKeys`); everything else in its caches (values, latents, the
non-rope part of a key) only moves. The arithmetic is float64 on whole cache rows: `load_rows` / `store_rows` are
the one place that knows the storage type (any numpy float dtype here; a quantized cache extends those two).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from tilellm.quant.errors import UnsupportedError
from tilellm.quant.kv import kv_load, kv_store, kv_type_of

# float64 bytes per chunk of moved rows (bounds the temporary of a long, wide cache)
CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class RopedKeys:
    """Rope'd keys in a KV cache: in array `cache` (a name of the model's `_cache_arrays`), for layers `layers`,
    the values `start .. start + rope.n_rot - 1` of the last axis were rotated by `rope` (a `layers.Rope`: its
    `n_rot`, `mode` "norm" (adjacent pairs) or "neox" (halves) and `inv_freq`) at their position."""

    cache: str
    layers: tuple[int, ...]
    start: int
    rope: Any


def load_rows(a: np.ndarray) -> np.ndarray:
    """Cache rows as float64 (the storage type's decoding: tilellm.quant.kv)."""
    if a.dtype.kind == "f":
        return a.astype(np.float64)
    if kv_type_of(a) is None:
        raise UnsupportedError(f"context shift over a KV cache stored as {a.dtype} is not supported")
    return kv_load(a).astype(np.float64)  # bf16, q8_0


def store_rows(dst: np.ndarray, x: np.ndarray, round_f16: bool = False) -> None:
    """float64 rows `x` into cache rows `dst`, rounded to its type once (`round_f16`: to fp16 first, as the
    numerics="ggml" models keep their float32 caches)."""
    if dst.dtype.kind == "f":  # one rounding from float64, as before
        dst[...] = x.astype(np.float16) if round_f16 else x
    else:  # bf16, q8_0: through float32 (the values were float32 before the rotation)
        kv_store(dst, (x.astype(np.float16) if round_f16 else x).astype(np.float32))


def rotate(x: np.ndarray, start: int, n_rot: int, mode: str, theta: np.ndarray) -> None:
    """Turn the rope pairs of `x[..., start:start + n_rot]` (float64, in place) by the angles `theta` [n_rot/2]."""
    seg = x[..., start:start + n_rot]
    if mode == "neox":
        h = n_rot // 2
        ia: Any = slice(0, h)
        ib: Any = slice(h, n_rot)
    else:
        ia, ib = slice(0, n_rot, 2), slice(1, n_rot, 2)
    c, s = np.cos(theta), np.sin(theta)
    a, b = seg[..., ia].copy(), seg[..., ib]
    seg[..., ia] = a * c - b * s
    seg[..., ib] = a * s + b * c


def check_shift(n_keep: int, n_discard: int, n_past: int) -> tuple[int, int]:
    """(n_keep, n_discard) as ints if a shift of them fits in `n_past` cached positions, else ValueError."""
    n_keep, n_discard = int(n_keep), int(n_discard)
    if n_keep < 0 or n_discard < 1 or n_keep + n_discard > n_past:
        raise ValueError(f"a context shift needs n_keep >= 0, n_discard >= 1 and n_keep + n_discard <= the "
                         f"{n_past} cached positions, got n_keep={n_keep}, n_discard={n_discard}")
    return n_keep, n_discard


def shift_arrays(arrays: Mapping[str, np.ndarray], roped: Sequence[RopedKeys], n_keep: int, n_discard: int,
                 n_past: int, round_f16: bool = False) -> None:
    """Positions n_keep .. n_keep+n_discard-1 out of every `[n_layer, n_ctx, ...]` array, the later ones (up to
    n_past) moved down by n_discard; the rope'd keys `roped` names turned by -n_discard positions."""
    n_keep, n_discard = check_shift(n_keep, n_discard, n_past)
    names = {r.cache for r in roped}
    if not names <= set(arrays):
        raise ValueError(f"rope'd keys named in caches {sorted(names - set(arrays))} the model does not have")
    src0 = n_keep + n_discard
    n_move = n_past - src0
    if n_move == 0:
        return
    for name, a in arrays.items():
        per_layer = {li: r for r in roped if r.cache == name for li in r.layers}
        row_bytes = 8 * max(1, int(np.prod(a.shape[2:], dtype=np.int64)))
        step = max(1, CHUNK_BYTES // row_bytes)
        for li in range(a.shape[0]):
            r = per_layer.get(li)
            if r is None:
                a[li, n_keep:n_keep + n_move] = a[li, src0:n_past]  # numpy copies overlapping ranges safely
                continue
            theta = -float(n_discard) * np.asarray(r.rope.inv_freq, dtype=np.float64)
            # ascending chunks: a chunk is read whole before it is written, to rows below its own
            for i in range(0, n_move, step):
                j = min(n_move, i + step)
                rows = load_rows(a[li, src0 + i:src0 + j])
                rotate(rows, r.start, r.rope.n_rot, r.rope.mode, theta)
                store_rows(a[li, n_keep + i:n_keep + j], rows, round_f16)
