"""KernelBackend: the Backend over one compiled C kernel variant (portable, avx2, avx512, ...).

It is the only object above `tilellm.kernels` that holds a `KernelLib`: the thread count and the
activation rounding are the library's own (given once, when the registry loads it), and the weight
types the variant lacks go to the next backend down (`fallback`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tilellm.kernels import KernelLib
from tilellm.kernels.attention import attention as kernel_attention
from tilellm.quant import GGMLType, TensorView
from tilellm.quant.errors import ShapeError, UnsupportedError

from .checks import check_activations, check_out, check_same_shape
from .layer import DecoderLayerSpec
from .ops import silu
from .protocol import Activations, Backend, LayerPlan

# The six weight types of the card; a variant may support more (its tl_supports decides).
CARD_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)


class KernelBackend(Backend):
    """Runs matmuls in the C library of one variant; weight types it lacks go to `fallback`."""

    def __init__(self, lib: KernelLib, fallback: Backend | None) -> None:
        self.lib = lib
        self.name = lib.variant
        self.fallback = fallback
        own = {t for t in GGMLType if lib.supports(t)}
        self.native_types = frozenset(own)
        self.weight_types = frozenset(own | (set(fallback.weight_types) if fallback else set()))

    @property
    def n_threads(self) -> int:  # type: ignore[override]
        """The library's thread count (one number, set when the registry loaded it)."""
        return int(self.lib.n_threads)

    def supports(self, t: GGMLType) -> bool:
        return t in self.weight_types

    def is_native(self, t: GGMLType) -> bool:
        return t in self.native_types

    def _route(self, t: GGMLType) -> Backend | None:
        """None when this library runs type t, else the backend that does (UnsupportedError if none)."""
        if t in self.native_types:
            return None
        if self.fallback is None or not self.fallback.supports(t):
            raise UnsupportedError(f"backend {self.name!r} cannot multiply {GGMLType(t).name} weights")
        return self.fallback

    def prepare(self, x: np.ndarray, weight_type: GGMLType) -> Activations:
        x = check_activations(x)
        t = GGMLType(weight_type)
        other = self._route(t)
        if other is not None:
            return other.prepare(x, t)
        return Activations(x, t, self.name, self.lib.prepare(t, x))

    def prepare_rms_norm(self, h: np.ndarray, w: np.ndarray, eps: float, weight_type: GGMLType) -> Activations:
        """prepare(rms_norm(h, w, eps), weight_type) in one C call (decode runs this before q/k/v and gate/up);
        the result's .x holds the normalised rows. Types this library lacks take the two steps."""
        t = GGMLType(weight_type)
        if (self._route(t) is not None or not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 1
                or not w.flags.c_contiguous):
            return super().prepare_rms_norm(h, w, eps, t)  # the two steps
        h = check_activations(h)
        payload, xn = self.lib.prepare_rms(t, h, w, eps)
        return Activations(xn, t, self.name, payload)

    def prepare_swiglu(self, g: np.ndarray, u: np.ndarray, weight_type: GGMLType) -> Activations:
        """prepare(silu(g) * u, weight_type) in one C call (before the down projection); .x holds silu(g) * u.
        Types this library lacks take numpy's SwiGLU and the other backend's prepare."""
        t = GGMLType(weight_type)
        check_same_shape(g, u)
        if self._route(t) is not None:
            return self.prepare(silu(g) * u, t)
        payload, xn = self.lib.prepare_swiglu(t, np.ascontiguousarray(g), np.ascontiguousarray(u))
        return Activations(xn, t, self.name, payload)

    def plan_layer(self, layer: DecoderLayerSpec, k_cache: np.ndarray, v_cache: np.ndarray) -> LayerPlan | None:
        """A checked C tl_layer for `layer` (caches float32 [n_ctx, n_head_kv, head_dim]) for decode_layer, or None
        when this library cannot run it in one call (a weight type it lacks, q/k/v or gate/up needing different
        activations): the caller then takes the step-by-step path."""
        s = layer.shape
        n_embd, n_head, n_head_kv, head_dim, n_rot, n_ff = s.n_embd, s.n_head, s.n_head_kv, s.head_dim, s.n_rot, s.n_ff
        lib, ffi = self.lib, self.lib.ffi
        ws = [layer.wq, layer.wk, layer.wv, layer.wo, layer.w_gate, layer.w_up, layer.w_down]
        if any(w is None or w.type not in self.native_types for w in ws):
            return None
        at = lib.act_type
        if len({at(w.type) for w in ws[:3]}) != 1 or at(layer.w_gate.type) != at(layer.w_up.type):
            return None
        if n_rot % 2 or not 0 <= n_rot <= head_dim:
            return None
        keep: list[Any] = []

        def vec(a: Any, n: int, name: str, writable: bool = False) -> Any:
            if a is None:
                return ffi.NULL
            if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.size != n or not a.flags.c_contiguous
                    or (writable and not a.flags.writeable)):
                raise ShapeError(f"{name} must be a C-contiguous float32 array of {n} values")
            p = ffi.from_buffer("float[]", a, require_writable=writable)
            keep.append(p)
            return p

        n_ctx = k_cache.shape[0] if isinstance(k_cache, np.ndarray) and k_cache.ndim == 3 else -1
        if (n_ctx < 1 or k_cache.shape != (n_ctx, n_head_kv, head_dim)
                or getattr(v_cache, "shape", None) != k_cache.shape):
            raise ShapeError(f"k/v caches must be float32 [n_ctx, {n_head_kv}, {head_dim}]")
        L = ffi.new("tl_layer *")
        L.n_embd, L.n_head, L.n_head_kv, L.head_dim, L.n_rot, L.n_ff = n_embd, n_head, n_head_kv, head_dim, n_rot, n_ff
        L.rope_neox, L.eps = int(bool(s.rope_neox)), float(s.eps)
        L.attn_norm, L.ffn_norm = vec(layer.attn_norm, n_embd, "attn_norm"), vec(layer.ffn_norm, n_embd, "ffn_norm")
        qd, kvd = n_head * head_dim, n_head_kv * head_dim
        L.bq = vec(layer.bq, qd, "bq")
        L.bk = vec(layer.bk, kvd, "bk")
        L.bv = vec(layer.bv, kvd, "bv")
        shapes = [(n_embd, qd), (n_embd, kvd), (n_embd, kvd), (qd, n_embd), (n_embd, n_ff), (n_embd, n_ff),
                  (n_ff, n_embd)]
        for field, w, (k, m) in zip(("wq", "wk", "wv", "wo", "gate", "up", "down"), ws, shapes):
            if w.k != k or w.n_rows != m:
                raise ShapeError(f"{w.name!r} is [{w.n_rows}, {w.k}], a layer of this shape needs [{m}, {k}]")
            pl = self._plan(w)
            keep.append(pl)
            tw = getattr(L, field)
            tw.wtype, tw.w, tw.ldw, tw.m = int(pl.t), pl.wp, pl.ldw, pl.m
        L.kv_stride = kvd
        kc, vc = vec(k_cache, k_cache.size, "k cache", True), vec(v_cache, v_cache.size, "v cache", True)
        return KernelLayerPlan(self, L, kc, vc, n_ctx, n_embd, n_rot // 2, keep)

    def decode_layer(self, plan: LayerPlan, h: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_past: int,
                     scale: float) -> None:
        """One token through a planned layer: h (float32, n_embd values, C-contiguous) updated in place; the
        token's k and v written to the plan's caches at position n_past."""
        if type(plan) is not KernelLayerPlan or plan.backend is not self:
            raise ShapeError("plan must come from this backend's plan_layer")
        n_past = int(n_past)
        if not 0 <= n_past < plan.n_ctx:
            raise ShapeError(f"position {n_past} is outside the cache of {plan.n_ctx} positions")
        ffi = self.lib.ffi
        for name, a, n in (("h", h, plan.n_embd), ("cos", cos, plan.half), ("sin", sin, plan.half)):
            if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.size != n or not a.flags.c_contiguous):
                raise ShapeError(f"{name} must be a C-contiguous float32 array of {n} values")
        if not h.flags.writeable:
            raise ShapeError("h is read-only")
        rc = self.lib.lib.tl_decode_layer(self.lib.ctx, plan.c, ffi.from_buffer("float[]", h),
                                          ffi.from_buffer("float[]", cos),
                                          ffi.from_buffer("float[]", sin), plan.kc, plan.vc, n_past, float(scale),
                                          self.lib.n_threads)
        if rc:
            self.lib._check_rc(rc, "tl_decode_layer")

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                  window: int | None = None) -> np.ndarray:
        """Causal grouped-query attention in C (f32, online softmax): q [T, H, D], k/v [n_past+T, Hkv, D];
        `window`: sliding-window attention (the query at position p sees keys p-window+1..p)."""
        return kernel_attention(self.lib, q, k, v, n_past, scale, self.lib.n_threads, window=window)

    def _plan(self, weight: TensorView) -> Any:
        """The weight checked once for this library (KernelLib.plan), cached on the (immutable) TensorView:
        decode multiplies every matrix once per token, and the checks cost more than a small gemv."""
        plans = weight.__dict__.get("_kernel_plans")
        if plans is None:
            plans = {}
            object.__setattr__(weight, "_kernel_plans", plans)  # TensorView is a frozen dataclass
        p = plans.get(self.name)
        if p is None or p.lib is not self.lib:
            p = plans[self.name] = self.lib.plan(weight.type, weight.data, weight.k)
        return p

    def _prepared_for(self, weight: TensorView, x: np.ndarray | Activations) -> Activations:
        """x as activations this library's kernels take for `weight`: reused when already prepared alike."""
        if (isinstance(x, Activations) and x.owner == self.name
                and self.lib.act_type(x.weight_type) == self.lib.act_type(weight.type)):
            if x.k != weight.k:
                raise ShapeError(f"prepared activations have k = {x.k} but {weight.name!r} has k = {weight.k}")
            return x
        return self.prepare(x.x if isinstance(x, Activations) else x, weight.type)

    def matmul_many(self, weights: Sequence[TensorView], x: np.ndarray | Activations) -> list[np.ndarray]:
        """[self.matmul(w, x) for w in weights] with one C call when every weight is native here and
        takes the same activations (tl_gemm_many); otherwise one matmul each. Bit-identical either way."""
        lib = self.lib
        if (len(weights) < 2 or len(weights) > lib.lib.TL_GEMM_MANY_MAX
                or any(w.type not in self.native_types for w in weights)
                or len({lib.act_type(w.type) for w in weights}) != 1 or len({w.k for w in weights}) != 1):
            return [self.matmul(w, x) for w in weights]
        prep = self._prepared_for(weights[0], x)
        return lib.run([self._plan(w) for w in weights], prep.payload)

    def matmul(self, weight: TensorView, x: np.ndarray | Activations, out: np.ndarray | None = None) -> np.ndarray:
        t = weight.type
        other = self._route(t)
        if other is not None:
            return other.matmul(weight, x.x if isinstance(x, Activations) else x, out)
        prep = self._prepared_for(weight, x)
        if out is None:
            return self.lib.run([self._plan(weight)], prep.payload)[0]
        res = check_out(out, prep.n, weight.n_rows)
        self.lib.gemm(t, weight.data, weight.k, prep.payload, out=res)
        return res


class KernelLayerPlan(LayerPlan):
    """A layer checked once by KernelBackend.plan_layer: the C tl_layer and everything it points into."""

    __slots__ = ("backend", "c", "kc", "vc", "n_ctx", "n_embd", "half", "_keep")

    def __init__(self, backend: KernelBackend, c: Any, kc: Any, vc: Any, n_ctx: int, n_embd: int, half: int,
                 keep: list[Any]) -> None:
        self.backend, self.c, self.kc, self.vc = backend, c, kc, vc
        self.n_ctx, self.n_embd, self.half, self._keep = n_ctx, n_embd, half, keep
