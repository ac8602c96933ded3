"""KernelBackend: a Backend over one compiled C kernel variant (portable, avx2, avx512, ...)."""
from __future__ import annotations

import numpy as np

from tilellm.quant import GGMLType, TensorView

from .protocol import Backend, Prepared, check_activations, check_out

# The six weight types of the card; a variant may support more (its tl_supports decides).
CARD_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1)


class KernelBackend:
    """Runs matmuls in the C library of one variant; weight types it lacks go to `fallback`."""

    def __init__(self, lib, n_threads: int, fallback: Backend | None) -> None:
        self.lib = lib
        self.name: str = lib.variant
        self.n_threads = int(n_threads)
        self.fallback = fallback
        own = {t for t in GGMLType if lib.supports(t)}
        self.native_types = frozenset(own)
        self.weight_types = frozenset(own | (set(fallback.weight_types) if fallback else set()))

    def supports(self, t: GGMLType) -> bool:
        return t in self.weight_types

    def _route(self, t: GGMLType) -> Backend | None:
        if t in self.native_types:
            return None
        if self.fallback is None or not self.fallback.supports(t):
            from tilellm.errors import UnsupportedError

            raise UnsupportedError(f"backend {self.name!r} cannot multiply {GGMLType(t).name} weights")
        return self.fallback

    def prepare(self, x: np.ndarray, weight_type: GGMLType) -> Prepared:
        x = check_activations(x)
        t = GGMLType(weight_type)
        other = self._route(t)
        if other is not None:
            return other.prepare(x, t)
        return Prepared(x, t, self.name, self.lib.prepare(t, x, n_threads=self.n_threads))

    def prepare_rms_norm(self, h: np.ndarray, w: np.ndarray, eps: float, weight_type: GGMLType) -> Prepared:
        """prepare(rms_norm(h, w, eps), weight_type) in one C call (decode runs this before q/k/v and gate/up);
        the result's .x holds the normalised rows. Types this library lacks take the two steps."""
        t = GGMLType(weight_type)
        if (self._route(t) is not None or not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 1
                or not w.flags.c_contiguous):
            from tilellm.llm.layers import rms_norm

            return self.prepare(rms_norm(h, w, eps), t)
        h = check_activations(h)
        payload, xn = self.lib.prepare_rms(t, h, w, eps, n_threads=self.n_threads)
        return Prepared(xn, t, self.name, payload)

    def prepare_swiglu(self, g: np.ndarray, u: np.ndarray, weight_type: GGMLType) -> Prepared:
        """prepare(silu(g) * u, weight_type) in one C call (before the down projection); .x holds silu(g) * u.
        The portable variant has no vector exp and does better with numpy's, as do types this library lacks."""
        t = GGMLType(weight_type)
        if self._route(t) is not None or self.name == "portable" or g.shape != u.shape:
            from tilellm.llm.layers import silu

            return self.prepare(silu(g) * u, t)
        payload, xn = self.lib.prepare_swiglu(t, np.ascontiguousarray(g), np.ascontiguousarray(u), n_threads=self.n_threads)
        return Prepared(xn, t, self.name, payload)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                  window: int | None = None) -> np.ndarray:
        """Causal grouped-query attention in C (f32, online softmax): q [T, H, D], k/v [n_past+T, Hkv, D];
        `window`: sliding-window attention (the query at position p sees keys p-window+1..p)."""
        from tilellm.kernels.attention import attention

        return attention(self.lib, q, k, v, n_past, scale, self.n_threads, window=window)

    def _plan(self, weight: TensorView):
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

    def _prepared_for(self, weight: TensorView, x) -> Prepared:
        """x as activations this library's kernels take for `weight`: reused when already prepared alike."""
        if isinstance(x, Prepared) and x.owner == self.name and self.lib.act_type(x.weight_type) == self.lib.act_type(weight.type):
            if x.k != weight.k:
                from tilellm.errors import ShapeError

                raise ShapeError(f"prepared activations have k = {x.k} but {weight.name!r} has k = {weight.k}")
            return x
        return self.prepare(x.x if isinstance(x, Prepared) else x, weight.type)

    def matmul_many(self, weights: "list[TensorView]", x) -> list[np.ndarray]:
        """[self.matmul(w, x) for w in weights] with one C call when every weight is native here and
        takes the same activations (tl_gemm_many); otherwise one matmul each. Bit-identical either way."""
        lib = self.lib
        if (len(weights) < 2 or len(weights) > lib.lib.TL_GEMM_MANY_MAX
                or any(w.type not in self.native_types for w in weights)
                or len({lib.act_type(w.type) for w in weights}) != 1 or len({w.k for w in weights}) != 1):
            return [self.matmul(w, x) for w in weights]
        prep = self._prepared_for(weights[0], x)
        return lib.run([self._plan(w) for w in weights], prep.payload, n_threads=self.n_threads)

    def matmul(self, weight: TensorView, x, out: np.ndarray | None = None) -> np.ndarray:
        t = weight.type
        other = self._route(t)
        if other is not None:
            return other.matmul(weight, x.x if isinstance(x, Prepared) else x, out)
        prep = self._prepared_for(weight, x)
        if out is None:
            return self.lib.run([self._plan(weight)], prep.payload, n_threads=self.n_threads)[0]
        res = check_out(out, prep.n, weight.n_rows)
        self.lib.gemm(t, weight.data, weight.k, prep.payload, out=res, n_threads=self.n_threads)
        return res
