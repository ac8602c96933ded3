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
from tilellm.kernels.attention import kv_pointer
from tilellm.quant import GGMLType, TensorView
from tilellm.quant.errors import ShapeError, UnsupportedError
from tilellm.quant.kv import QK, kv_type_of

from .layer import OPS, PRE, LayerProgram
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
        t = GGMLType(weight_type)
        other = self._route(t)
        if other is not None:
            return other.prepare(x, t)
        x = _c_order(x)
        return Activations(x, t, self.name, self.lib.prepare(t, x))  # KernelLib validates x

    def prepare_rms_norm(self, h: np.ndarray, w: np.ndarray, eps: float, weight_type: GGMLType) -> Activations:
        """prepare(rms_norm(h, w, eps), weight_type) in one C call (decode runs this before q/k/v and gate/up);
        the result's .x holds the normalised rows. Types this library lacks take the two steps."""
        t = GGMLType(weight_type)
        if (self._route(t) is not None or not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 1
                or not w.flags.c_contiguous):
            return super().prepare_rms_norm(h, w, eps, t)  # the two steps
        payload, xn = self.lib.prepare_rms(t, _c_order(h), w, eps)  # KernelLib validates h
        return Activations(xn, t, self.name, payload)

    def prepare_swiglu(self, g: np.ndarray, u: np.ndarray, weight_type: GGMLType) -> Activations:
        """prepare(silu(g) * u, weight_type) in one C call (before the down projection); .x holds silu(g) * u.
        Types this library lacks take numpy's SwiGLU and the other backend's prepare."""
        t = GGMLType(weight_type)
        if self._route(t) is not None:
            return super().prepare_swiglu(g, u, t)  # numpy's SwiGLU (shapes checked there), the fallback's prepare
        payload, xn = self.lib.prepare_swiglu(t, _c_order(g), _c_order(u))  # KernelLib validates g and u
        return Activations(xn, t, self.name, payload)

    def plan_layer(self, program: LayerProgram) -> LayerPlan | None:
        """The layer program lowered to C (tl_program) and checked once (tl_layer_check), for decode_layer; None
        when this library lacks one of its weight types (the caller then takes the step-by-step path)."""
        if any(w.type not in self.native_types for w in program.weights()):
            return None
        return _lower(self, program)

    def decode_layer(self, plan: LayerPlan, h: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                     positions: Sequence[int] | np.ndarray, slots: Sequence[int] | np.ndarray | None = None) -> None:
        """n tokens through a planned layer in one C call (tl_layer_run): h float32 [n, n_embd] (or [n_embd] for
        one) updated in place, rope angles cos / sin [n, n_rot / 2]; token j at positions[j] of cache slot
        slots[j] (default 0), its keys and values written there."""
        if type(plan) is not KernelLayerPlan or plan.backend is not self:
            raise ShapeError("plan must come from this backend's plan_layer")
        pos = _int64_row(positions)
        n = pos.size
        slot = _ONE_SLOT_0 if slots is None and n == 1 else (
            np.zeros(n, np.int64) if slots is None else _int64_row(slots))
        if n < 1 or slot.size != n:
            raise ShapeError(f"decode_layer needs one position and one slot per token, got {n} and {slot.size}")
        # one token (decode, once per layer): Python ints instead of four numpy reductions (~20 us a layer)
        p_lo, p_hi = (int(pos[0]),) * 2 if n == 1 else (int(pos.min()), int(pos.max()))
        s_lo, s_hi = (int(slot[0]),) * 2 if n == 1 else (int(slot.min()), int(slot.max()))
        if p_lo < 0 or p_hi >= plan.n_ctx:
            raise ShapeError(f"position {p_hi if p_hi >= plan.n_ctx else p_lo} is outside the "
                             f"cache of {plan.n_ctx} positions")
        if s_lo < 0 or s_hi >= plan.n_slots:
            raise ShapeError(f"cache slot {s_hi if s_hi >= plan.n_slots else s_lo} is outside the {plan.n_slots} "
                             "slots of the plan's caches")
        lib, ffi = self.lib, self.lib.ffi
        for name, a, k in (("h", h, plan.n_embd), ("cos", cos, plan.half), ("sin", sin, plan.half)):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.size != n * k or not a.flags.c_contiguous:
                raise ShapeError(f"{name} must be a C-contiguous float32 array of {n} x {k} values")
        if not h.flags.writeable:
            raise ShapeError("h is read-only")
        rc = lib.lib.tl_layer_run(lib.ctx, plan.c, n, ffi.from_buffer("float[]", h), ffi.from_buffer("float[]", cos),
                                  ffi.from_buffer("float[]", sin), ffi.from_buffer("int64_t[]", pos),
                                  ffi.from_buffer("int64_t[]", slot), lib.n_threads)
        if rc:
            lib._check_rc(rc, "tl_layer_run")

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                  window: int | None = None) -> np.ndarray:
        """Causal grouped-query attention in C (online softmax): q [T, H, D] float32, k/v [n_past+T, Hkv, D] KV
        cache slices of any cache type (tilellm.quant.kv), read as stored;
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
        return self.lib.gemm(t, weight.data, weight.k, prep.payload, out=out)  # KernelLib validates out


def _c_order(x: Any) -> Any:
    """A numpy array in C order (copied only when it is not); anything else as given. Not a check: KernelLib
    validates every argument once, at the Python-C boundary."""
    return np.ascontiguousarray(x) if isinstance(x, np.ndarray) and not x.flags.c_contiguous else x


_ONE_SLOT_0 = np.zeros(1, np.int64)  # the default slot of one decoded token (C only reads it)
_ONE_SLOT_0.setflags(write=False)


def _int64_row(a: Any) -> np.ndarray:
    """a as a C-contiguous 1-D int64 array (itself when it already is one: decode passes one per layer)."""
    if type(a) is np.ndarray and a.dtype == np.int64 and a.ndim == 1 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.int64).reshape(-1)


class KernelLayerPlan(LayerPlan):
    """A layer program checked once by KernelBackend.plan_layer: the C tl_program and everything it points into."""

    __slots__ = ("backend", "c", "n_embd", "half", "n_ctx", "n_slots", "_keep")

    def __init__(self, backend: KernelBackend, c: Any, n_embd: int, half: int, n_ctx: int, n_slots: int,
                 keep: list[Any]) -> None:
        self.backend, self.c, self.n_embd, self.half = backend, c, n_embd, half
        self.n_ctx, self.n_slots, self._keep = n_ctx, n_slots, keep


_OP_IDS = {op: i + 1 for i, op in enumerate(OPS)}  # tl_op of tilellm.h
_CACHE_ERROR = ("caches must be KV cache arrays (tilellm.quant.kv: float32, float16, bf16, q8_0) "
                "[n_slots, n_ctx, ...], each slot's positions contiguous, of one n_ctx")


def _lower(be: KernelBackend, program: LayerProgram) -> KernelLayerPlan:
    """program as a C tl_program (checked by tl_layer_check); every array it points into is kept by the plan."""
    lib, ffi = be.lib, be.lib.ffi
    keep: list[Any] = []

    def new(ctype: str, init: Any) -> Any:
        p = ffi.new(ctype, init)
        keep.append(p)
        return p

    def vec(a: np.ndarray, n: int, what: str) -> Any:
        keep.append(a)
        return lib.float_pointer(a, what, size=n)

    def weights(ws: Sequence[TensorView]) -> Any:
        out = new("tl_weight[]", len(ws))
        for c, w in zip(out, ws):
            if len(w.shape) != 2:
                raise ShapeError(f"{w.name!r} is not a matrix")
            p = be._plan(w)
            keep.append(p)
            c.wtype, c.w, c.ldw, c.m = int(p.t), p.wp, p.ldw, p.m
        return out

    def stacked(t: TensorView, count: int) -> tuple[Any, int]:
        """A 3-D weight of `count` matrices: matrix 0 as a tl_weight[1] and the bytes between matrices."""
        if len(t.shape) != 3 or t.shape[2] != count:
            raise ShapeError(f"{t.name!r} has shape {list(t.shape)}, expected {count} matrices")
        keep.append(t)
        return weights([t.matrix(0)]), t.shape[1] * int(t.data.strides[0])

    n_ctx = n_slots = -1
    ptrs, lds, strides, types = [], [], [], []
    for i, a in enumerate(program.caches):
        t = kv_type_of(a) if isinstance(a, np.ndarray) else None
        if (t is None or a.ndim < 2 or a.strides[0] % a.itemsize or not a[0].flags.c_contiguous
                or n_ctx not in (-1, a.shape[1])):
            raise ShapeError(_CACHE_ERROR)
        n_slots, n_ctx = a.shape[0], a.shape[1]
        per = QK if t == GGMLType.Q8_0 else 1  # values per element (a q8_0 block holds 32)
        ptrs.append(kv_pointer(lib, a, f"cache {i}"))
        lds.append(int(np.prod(a.shape[2:], dtype=np.int64)) * per)
        strides.append(a.strides[0] // a.itemsize * per)
        types.append(int(t))
        keep.append(a)
    steps = new("tl_step[]", max(1, len(program.steps)))
    for c, s in zip(steps, program.steps):
        c.op = _OP_IDS[s.op]
        c.mode = PRE.index(s.pre) if s.op == "matmul" else int(s.neox)
        c.dst, c.src, c.src2, c.rows, c.ld_dst, c.ld_src, c.n = s.dst, s.src, s.src2, s.rows, s.ld_dst, s.ld_src, s.n
        if s.op == "matmul_heads":
            c.w, c.w_stride = stacked(s.weights[0], s.rows)
        elif s.weights:
            c.w, c.count = weights(s.weights), len(s.weights)
        if s.vec is not None:
            c.vec = vec(s.vec, s.n, f"{s.op} vector")
        c.eps, c.scale, c.cache, c.cache2, c.c_off, c.c_ld = s.eps, s.scale, s.cache, s.cache2, s.c_off, s.c_ld
        c.n_head, c.n_head_kv, c.dk, c.dv, c.window = s.n_head, s.n_head_kv, s.dk, s.dv, s.window
        if s.moe is not None:
            m, spec = new("tl_moe *", None), s.moe
            E = spec.router.n_rows
            m.router = weights([spec.router])[0]
            m.bias = vec(spec.bias, E, "expert selection bias") if spec.bias is not None else ffi.NULL
            m.n_expert, m.n_used, m.gating, m.n_group, m.n_group_used = E, spec.n_used, spec.gating, spec.n_group, \
                spec.n_group_used
            m.norm, m.scale = int(bool(spec.norm)), float(spec.scale)
            (g, m.gate_stride), (u, m.up_stride), (d, m.down_stride) = (stacked(t, E) for t in (
                spec.gate_exps, spec.up_exps, spec.down_exps))
            m.gate, m.up, m.down = g[0], u[0], d[0]
            c.moe = m
    prog = new("tl_program *", None)
    prog.n_embd, prog.row, prog.n_rot = program.n_embd, program.row, program.n_rot
    prog.n_ctx, prog.n_slots = max(n_ctx, 1), max(n_slots, 1)
    prog.n_steps, prog.steps = len(program.steps), steps
    prog.n_caches = len(ptrs)
    prog.caches, prog.cache_ld, prog.slot_stride = (new("void *[]", ptrs), new("int64_t[]", lds),
                                                    new("int64_t[]", strides))
    prog.cache_type = new("int[]", types) if types else ffi.NULL
    rc = lib.lib.tl_layer_check(lib.ctx, prog)
    if rc:
        raise ShapeError(f"the layer program was refused by tl_layer_check (status {rc}): a step's sizes, offsets, "
                         "weights or caches do not fit together")
    return KernelLayerPlan(be, prog, program.n_embd, program.n_rot // 2, prog.n_ctx, prog.n_slots, keep)
