"""Validated Python access to the compiled kernel variants (cffi modules ``_tl_<variant>``).

Every argument is checked here before any C call: C trusts what it is given (tilellm.h), so a
wrong dtype, shape or stride must become a ShapeError in Python, never a crash.
"""
from __future__ import annotations

import importlib
import importlib.util
import mmap
import os
import threading
from typing import Any, Sequence

import numpy as np

from tilellm.quant import TYPE_INFO, GGMLType, type_from_any
from tilellm.quant.errors import BackendUnavailableError, NumericalError, ShapeError, UnsupportedError

from .threads import MAX_THREADS, default_threads
from .variants import BY_NAME, NAMES

VARIANTS: tuple[str, ...] = NAMES  # best first

# TL_CPU_* bits of tilellm.h -> feature names (the names the backend registry uses).
FEATURE_BITS = {
    "avx2": 1 << 0, "fma": 1 << 1, "f16c": 1 << 2,
    "avx512f": 1 << 3, "avx512bw": 1 << 4, "avx512vl": 1 << 5, "avx512dq": 1 << 6,
    "avx512vnni": 1 << 7, "avx512bf16": 1 << 8,
    "amx_tile": 1 << 9, "amx_int8": 1 << 10, "amx_bf16": 1 << 11, "avx_vnni": 1 << 12,
    "neon": 1 << 16, "dotprod": 1 << 17, "fp16": 1 << 18,
    "sme": 1 << 19, "sme2": 1 << 20, "i8mm": 1 << 21, "bf16": 1 << 22,
}

# What each variant's compiler flags let the compiler emit: importing a module without these
# could fault (SIGILL), so load() checks before the import.
REQUIRES: dict[str, frozenset[str]] = {v.name: v.requires for v in BY_NAME.values()}
# Where a variant hands the weight types it lacks (None: the reference backend).
FALLBACK: dict[str, str | None] = {v.name: v.fallback for v in BY_NAME.values()}

TL_OK, TL_UNSUPPORTED, TL_EINVAL, TL_ENOMEM, TL_ENONFINITE = 0, 1, 2, 3, 4
_ALIGN = 64  # prepared activation rows are 64-byte aligned (see kernels/src/tl_internal.h)

_CACHEABLE = (GGMLType, int, str)  # KernelLib._info's cache keys
_lock = threading.Lock()
_modules: dict[str, Any] = {}
_import_errors: dict[str, str] = {}
_inited: dict[str, int] = {}


def _module(variant: str):
    """The cffi module of `variant`, or None if it is not compiled (import is attempted once)."""
    with _lock:
        if variant in _modules:
            return _modules[variant]
        if variant in _import_errors:
            return None
        try:
            mod = importlib.import_module(f"tilellm.kernels._tl_{variant}")
        except ImportError as e:
            _import_errors[variant] = str(e)
            return None
        _modules[variant] = mod
        return mod


def compiled() -> list[str]:
    """Variants whose extension module is installed and imports. A variant this CPU cannot
    run is listed if its module file exists but is not imported (its code could fault)."""
    feats = cpu_features()
    out = []
    for v in VARIANTS:
        try:
            if importlib.util.find_spec(f"tilellm.kernels._tl_{v}") is None:
                continue
        except (ImportError, ValueError):
            continue
        if REQUIRES[v] <= feats and _module(v) is None:
            continue
        out.append(v)
    return out


# $TILELLM_CPU_CAP=<variant> makes the CPU look as if it had only what that variant needs (e.g. "avx2" on an
# AVX-512 host), so every host can run the AVX2-only behaviour. Read once, at import.
CPU_CAP_ENV = "TILELLM_CPU_CAP"
_CPU_CAP = os.environ.get(CPU_CAP_ENV, "").strip().lower() or None


def cpu_cap() -> str | None:
    """The variant detection is capped at ($TILELLM_CPU_CAP), or None."""
    if _CPU_CAP is not None and _CPU_CAP not in REQUIRES:
        raise ValueError(f"${CPU_CAP_ENV}={_CPU_CAP!r} is not a kernel variant; use one of {', '.join(VARIANTS)}")
    return _CPU_CAP


def detected_cpu_features() -> set[str]:
    """Features of the running CPU, as detected by the portable module (empty if not built), ignoring any cap."""
    mod = _module("portable")
    if mod is None:
        return set()
    bits = int(mod.lib.tl_cpu_features())
    return {name for name, bit in FEATURE_BITS.items() if bits & bit}


def cpu_features() -> set[str]:
    """Features the kernels may use: the detected ones, limited to the cap's if $TILELLM_CPU_CAP is set."""
    feats = detected_cpu_features()
    cap = cpu_cap()
    return feats & REQUIRES[cap] if cap is not None else feats


# ---- options of a KernelLib (tl_options of tilellm.h) ------------------------------------------------
# Python name -> {Python value: C value}. The environment overrides below are read once, here, at import,
# and become the defaults of load()'s keyword arguments; C reads no environment.
ACT_ROUNDING = {"fine": 0, "ggml": 1}
OPTIONS: dict[str, dict[Any, int]] = {
    "bf16_exact": {False: 0, True: 1},  # avx512 bf16 weights: exact f32 activations instead of vdpbf16ps
    "q8_gemv": {"auto": 0, "panel": 1, "rows": 2},  # avx512 q8_0 one-token path (same bits)
    "sme_tile": {"auto": 0, "16x64": 1, "64x16": 2},  # sme / sme2 micro-kernel shape (same bits)
    "sme_bf16": {False: 0, True: 1},  # sme / sme2 bf16 weights: BFMOPA on bf16-rounded activations
    "amx": {True: 0, False: 1},  # avx512 q8_0/q4_0 prompts on AMX tiles where the (capped) CPU has them (same bits)
}
AMX_FEATURES = frozenset({"amx_tile", "amx_int8"})


def options_from_env(env: Any) -> dict[str, Any]:
    """Option defaults from $TILELLM_BF16_EXACT=1, $TILELLM_Q8_GEMV=panel|rows, $TILELLM_SME_TILE=16x64|64x16,
    $TILELLM_SME_BF16=bfmopa and $TILELLM_AMX=0 (anything else: the default)."""
    q8, tile = env.get("TILELLM_Q8_GEMV", ""), env.get("TILELLM_SME_TILE", "")
    return {"bf16_exact": env.get("TILELLM_BF16_EXACT", "")[:1] == "1",
            "q8_gemv": q8 if q8 in OPTIONS["q8_gemv"] else "auto",
            "sme_tile": tile if tile in OPTIONS["sme_tile"] else "auto",
            "sme_bf16": env.get("TILELLM_SME_BF16", "") == "bfmopa",
            # on by default where the CPU has AMX: decode right after an AMX prefill measured the same as after
            # a VNNI one (session 9, 24 interleaved rounds; the slow rounds seen in session 8 hit both)
            "amx": env.get("TILELLM_AMX", "") != "0"}


DEFAULT_OPTIONS: dict[str, Any] = options_from_env(os.environ)


def _check_options(act_rounding: Any, options: dict[str, Any]) -> dict[str, Any]:
    """act_rounding plus every option (defaults filled in), each checked: {name: Python value}."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown kernel option(s) {sorted(unknown)}; known: {sorted(OPTIONS)}")
    out = {"act_rounding": act_rounding, **DEFAULT_OPTIONS, **options}
    for name, value in out.items():
        allowed = ACT_ROUNDING if name == "act_rounding" else OPTIONS[name]
        # bools are checked by type: 1 == True would otherwise pass as a bool option
        if not isinstance(value, (str, bool)) or value not in allowed or type(value) is not type(next(iter(allowed))):
            raise ValueError(f"{name} must be one of {sorted(allowed, key=str)}, got {value!r}")
    return out


def load(variant: str, n_threads: int | None = None, *, act_rounding: str = "fine", **options: Any) -> "KernelLib":
    """The kernels of `variant`, initialised (tl_init), with their own context (tl_ctx) of options.

    ``act_rounding``: how activations are rounded for quantized weights: ``"fine"`` (one scale per 16 values,
    measured closer to the float model than ggml's) or ``"ggml"`` (one per 32, per 256 for K-quants: ggml's
    granularity, to reproduce llama.cpp's rounding, e.g. to compare perplexities with it).
    ``options``: ``bf16_exact`` (bool), ``q8_gemv`` ("auto", "panel", "rows"), ``sme_tile`` ("auto", "16x64",
    "64x16"), ``sme_bf16`` (bool), ``amx`` (bool: q8_0/q4_0 prompts on AMX tiles if the CPU has them; same bits);
    defaults from the environment at import (DEFAULT_OPTIONS). Each KernelLib computes
    with its own options only: two in one process never affect each other.

    Raises BackendUnavailableError if the variant is unknown, not compiled, or cannot run here; ValueError /
    TypeError for a bad or unknown option.
    """
    opts = _check_options(act_rounding, options)
    if not isinstance(variant, str) or variant.lower() not in VARIANTS:
        raise BackendUnavailableError(f"unknown kernel variant {variant!r}; known: {', '.join(VARIANTS)}")
    variant = variant.lower()
    if variant not in compiled():
        raise BackendUnavailableError(f"kernel variant {variant!r} is not compiled into this install "
                                      f"(compiled: {', '.join(compiled()) or 'none'})")
    missing = REQUIRES[variant] - cpu_features()
    if missing:
        raise BackendUnavailableError(f"kernel variant {variant!r} needs CPU features this machine lacks: "
                                      f"{', '.join(sorted(missing))}")
    mod = _module(variant)
    if mod is None:
        raise BackendUnavailableError(f"kernel variant {variant!r} failed to import: {_import_errors.get(variant)}")
    with _lock:
        if variant not in _inited:
            _inited[variant] = int(mod.lib.tl_init())
        rc = _inited[variant]
    if rc != TL_OK:
        raise BackendUnavailableError(f"kernel variant {variant!r} cannot run on this machine (tl_init returned {rc})")
    name = mod.ffi.string(mod.lib.tl_variant()).decode()
    if name != variant:
        raise BackendUnavailableError(f"module _tl_{variant} reports itself as {name!r}")
    return KernelLib(variant, mod, n_threads, opts)


# ---- validation helpers ------------------------------------------------------------------------

def _as_type(t: Any) -> GGMLType:
    # floats and bools are not type ids (type_from_any would truncate 2.5 to Q4_0)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer, str)):
        raise UnsupportedError(f"not a weight type id: {t!r}")
    try:
        return type_from_any(t)
    except (ValueError, TypeError) as e:
        raise UnsupportedError(f"unknown weight type {t!r}") from e


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ShapeError(f"{what} must be an int, got {type(v).__name__}")
    return int(v)


def _threads(n: Any, default: int) -> int:
    if n is None:
        return default
    n = _as_int(n, "n_threads")
    if not 1 <= n <= MAX_THREADS:
        raise ShapeError(f"n_threads must be in 1..{MAX_THREADS}, got {n}")
    return n


def _byte_span(a: np.ndarray) -> np.ndarray:
    """A 1-D uint8 view from a's first byte to its last (a has non-negative strides and a
    contiguous last axis), so cffi can take a pointer to a strided array. Read-only arrays give
    read-only views."""
    v = a if a.dtype == np.uint8 else a.view(np.uint8)
    nbytes = 1 + sum((s - 1) * st for s, st in zip(v.shape, v.strides))
    return np.lib.stride_tricks.as_strided(v, shape=(nbytes,), strides=(1,))


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _bounds(a: np.ndarray) -> tuple[int, int]:
    """[lowest, highest+1) byte addresses a's elements touch (any strides)."""
    lo = hi = _addr(a)
    for n, st in zip(a.shape, a.strides):
        if n == 0:
            return lo, lo
        if st < 0:
            lo += (n - 1) * st
        else:
            hi += (n - 1) * st
    return lo, hi + a.itemsize


_TRUSTED_BASES = (bytes, bytearray, memoryview, mmap.mmap)


def _check_inside(a: np.ndarray, what: str) -> None:
    """a must lie inside the memory it views. Views numpy builds itself (slicing, reshape,
    frombuffer, memmap, ndarray(buffer=...), strides setter) are bounds-checked by numpy, so a
    .base chain of ndarrays ending in an owner or a plain buffer is fine (fast path: no address
    arithmetic, this runs on every matmul). Anything else in the chain (as_strided's wrapper,
    foreign __array_interface__ objects) can describe memory past the buffer: check it."""
    obj = a.base
    while isinstance(obj, np.ndarray):
        obj = obj.base
    if obj is None or isinstance(obj, _TRUSTED_BASES):
        return
    _check_inside_slow(a, what)


def _check_inside_slow(a: np.ndarray, what: str) -> None:
    """a must lie inside every array it is a view of, and inside the buffer object at the
    bottom of its .base chain."""
    lo, hi = _bounds(a)
    obj = a.base
    while obj is not None:
        if isinstance(obj, np.ndarray):
            blo, bhi = _bounds(obj)
        elif hasattr(obj, "__array_interface__") and hasattr(obj, "base"):
            obj = obj.base  # numpy's as_strided wrapper: check against what it wraps
            continue
        else:
            try:
                whole = np.frombuffer(obj, dtype=np.uint8)
            except (TypeError, ValueError, BufferError):
                raise ShapeError(f"{what}: cannot tell which memory this array views; pass a numpy array over "
                                 "numpy-, mmap- or bytes-owned memory") from None
            blo, bhi = _addr(whole), _addr(whole) + whole.nbytes
        if lo < blo or hi > bhi:
            raise ShapeError(f"{what} reaches outside the memory it views (a view built with as_strided?)")
        obj = getattr(obj, "base", None)


class Prepared:
    """Activations converted for one weight-type family (see KernelLib.act_type) and one k.

    Reusable for any number of gemm calls whose weight type has the same activation type and
    the same k (q/k/v, gate/up). Holds its own buffer: later changes to x do not affect it.
    """

    __slots__ = ("variant", "weight_type", "act_type", "n", "k", "buf", "_owner", "_c")

    def __init__(self, owner: "KernelLib", weight_type: GGMLType, act_type: GGMLType, n: int, k: int, buf: np.ndarray,
                 ptr: Any = None):
        self._owner = owner
        self.variant = owner.variant
        self.weight_type = weight_type
        self.act_type = act_type
        self.n = n
        self.k = k
        self.buf = buf
        # what prepare() checked and handed to C, kept privately: (buffer, its C pointer, act type, n, k).
        # The pointer holds a buffer export, so the memory can be neither freed nor resized under it; a
        # Prepared whose public fields were changed afterwards is checked in full again (KernelLib._act_arg).
        self._c = (buf, ptr, act_type, n, k) if ptr is not None else None

    def __repr__(self) -> str:
        return f"Prepared({self.variant}, {self.act_type.name} for {self.weight_type.name}, n={self.n}, k={self.k})"


class GemmPlan:
    """One weight matrix checked by KernelLib.plan: run it with KernelLib.run. Keeps the weights alive (and their
    buffer exported, so a mapping under them cannot be closed while the plan exists)."""

    __slots__ = ("lib", "t", "at", "w2d", "k", "m", "ldw", "wp")

    def __init__(self, lib: "KernelLib", t: GGMLType, at: GGMLType, w2d: np.ndarray, k: int, m: int, ldw: int, wp: Any):
        self.lib, self.t, self.at, self.w2d, self.k, self.m, self.ldw, self.wp = lib, t, at, w2d, k, m, ldw, wp

    def __repr__(self) -> str:
        return f"GemmPlan({self.lib.variant}, {self.t.name}, m={self.m}, k={self.k})"



def _matrix_shape(a: Any, what: str, dtype: Any, dtype_says: str, dims: tuple[str, str]) -> tuple[int, int]:
    """Checks that `a` is a 2-D numpy array of `dtype` with at least one row: its (rows, columns), or a
    ShapeError naming `what` was wrong (`dims`: the two axes' names, as the error says them)."""
    if not isinstance(a, np.ndarray):
        raise ShapeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ShapeError(f"{what} must be {dtype_says}, got {a.dtype}")
    if a.ndim != 2:
        raise ShapeError(f"{what} must be 2-D [{dims[0]}, {dims[1]}], got shape {a.shape}")
    rows, cols = a.shape
    if rows < 1:
        raise ShapeError(f"{what} have {dims[0]} = {rows} rows; need at least 1")
    return int(rows), int(cols)

class KernelLib:
    """One loaded variant. All methods validate their arguments and raise ShapeError
    (bad arrays/sizes) or UnsupportedError (weight type without a kernel here)."""

    def __init__(self, variant: str, module, n_threads: int | None, options: dict[str, Any]):
        self.variant = variant
        self._mod = module
        self.ffi = module.ffi
        self.lib = module.lib
        self.n_threads = _threads(n_threads, default_threads())
        self.options = dict(options)  # act_rounding and every tl_options field, as load() took them
        c = {k: (ACT_ROUNDING if k == "act_rounding" else OPTIONS[k])[v] for k, v in self.options.items()}
        amx_off = c.pop("amx")
        c["amx_off"] = amx_off if AMX_FEATURES <= cpu_features() else 1  # C cannot see $TILELLM_CPU_CAP
        ctx = self.lib.tl_ctx_new(self.ffi.new("tl_options *", c))
        if ctx == self.ffi.NULL:
            raise MemoryError(f"tl_ctx_new failed for variant {variant!r}")
        self.ctx = self.ffi.gc(ctx, self.lib.tl_ctx_free)  # freed with this object; every C call takes it
        self._tcache: dict[Any, tuple[GGMLType, int, int, GGMLType]] = {}

    @property
    def act_rounding(self) -> str:
        return self.options["act_rounding"]

    def __repr__(self) -> str:
        return f"KernelLib({self.variant!r}, n_threads={self.n_threads}, act_rounding={self.act_rounding!r})"

    def supports(self, t: Any) -> bool:
        try:
            self._info(t)
        except UnsupportedError:
            return False
        return True

    def uses_amx(self, t: Any, n: int) -> bool:
        """Whether a gemm of n tokens with weights of type t runs on AMX tiles here (False if unsupported)."""
        return self.supports(t) and bool(self.lib.tl_uses_amx(self.ctx, int(self._supported(t)), int(n)))

    def _supported(self, t: Any) -> GGMLType:
        return self._info(t)[0]

    def _info(self, t: Any) -> tuple[GGMLType, int, int, GGMLType]:
        """(type, block size, bytes per block, activation type) of a supported weight type;
        cached per key because this is on the per-matmul path."""
        # only exact GGMLType / int / str keys hit the cache: True == 1 and 8.0 == 8 hash like
        # valid ids and would otherwise be served as F16 / Q8_0 without reaching _as_type
        if type(t) in _CACHEABLE:
            try:
                return self._tcache[t]
            except KeyError:
                pass
        tt = _as_type(t)
        if not self.lib.tl_supports(self.ctx, int(tt)):
            raise UnsupportedError(f"kernel variant {self.variant!r} has no kernel for {tt.name} weights")
        act = GGMLType(int(self.lib.tl_act_type(self.ctx, int(tt))))
        info = (tt, TYPE_INFO[tt].block_size, TYPE_INFO[tt].type_size, act)
        if type(t) in _CACHEABLE:
            self._tcache[t] = info
        return info

    def act_type(self, t: Any) -> GGMLType:
        """The type activations are converted to for weights of type t."""
        return self._info(t)[3]

    def _check_k(self, t: GGMLType, k: Any) -> int:
        if type(k) is not int:
            k = _as_int(k, "k")
        bs = TYPE_INFO[t].block_size
        if k < 1:
            raise ShapeError(f"k must be >= 1, got {k}")
        if k % bs:
            raise ShapeError(f"k = {k} is not a multiple of the {t.name} block size {bs}")
        return k

    def prepare(self, weight_type: Any, x: np.ndarray, n_threads: int | None = None) -> Prepared:
        """Convert float32 activations x [n, k] for weights of weight_type (f32 copy or q8 blocks)."""
        t, _, _, at = self._info(weight_type)
        nth = self.n_threads if n_threads is None else _threads(n_threads, self.n_threads)
        n, k, ldx, xp = self._act_input(t, x)
        buf, bufp = self._act_buffer(t, n, k)
        rc = self.lib.tl_act_prepare(self.ctx, int(t), xp, ldx, n, k, bufp, nth)
        if rc:
            self._check_rc(rc, "tl_act_prepare", t, (("activations", x),))
        return Prepared(self, t, at, n, k, buf, bufp)

    def _act_input(self, t: GGMLType, x: np.ndarray) -> tuple[int, int, int, Any]:
        """Checks float32 activations x [n, k] (rows contiguous, any row stride) for weights of type t:
        (n, k, row stride in floats, C pointer)."""
        n, k = _matrix_shape(x, "activations", np.float32, "float32", ("n", "k"))
        k = self._check_k(t, k)
        sx0, sx1 = x.strides
        if sx1 != 4 or not x.flags.aligned:
            raise ShapeError(f"activation rows must be contiguous aligned float32 (strides {x.strides})")
        ldx_b = sx0 if n > 1 else 4 * k
        if ldx_b < 4 * k or ldx_b % 4:
            raise ShapeError(f"activation row stride {sx0} bytes is not a positive multiple of 4 >= 4*k")
        _check_inside(x, "activations")
        xs = x if x.flags.c_contiguous else _byte_span(x)
        return n, k, ldx_b // 4, self.ffi.from_buffer("float[]", xs, require_writable=False)

    def _act_buffer(self, t: GGMLType, n: int, k: int) -> tuple[np.ndarray, Any]:
        """A fresh activation buffer for n rows of k for weights of type t, 64-byte aligned (the kernels use aligned
        loads on it), and its C pointer."""
        nbytes = self.lib.tl_act_bytes(self.ctx, int(t), n, k)
        if nbytes <= 0:
            raise ShapeError(f"cannot size activations for {t.name}, n={n}, k={k}")
        ffi = self.ffi
        raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
        off = -int(ffi.cast("uintptr_t", ffi.from_buffer(raw))) % _ALIGN
        buf = raw[off:off + nbytes]
        return buf, ffi.from_buffer(buf)

    def prepare_rms(self, weight_type: Any, x: np.ndarray, w: np.ndarray, eps: float,
                    n_threads: int | None = None) -> tuple[Prepared, np.ndarray]:
        """(prepare(weight_type, xn), xn) for xn = x / sqrt(mean(x^2) + eps) * w row by row, in one C call
        (tl_act_prepare_rms); x float32 [n, k] with contiguous rows, w float32 [k]."""
        t, _, _, at = self._info(weight_type)
        nth = self.n_threads if n_threads is None else _threads(n_threads, self.n_threads)
        n, k, ldx, xp = self._act_input(t, x)
        if (not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.shape != (k,) or not w.flags.c_contiguous
                or not w.flags.aligned):
            raise ShapeError(f"norm weights must be a contiguous float32 [{k}] array")
        _check_inside(w, "norm weights")
        ffi = self.ffi
        buf, bufp = self._act_buffer(t, n, k)
        xn = np.empty((n, k), np.float32)
        rc = self.lib.tl_act_prepare_rms(self.ctx, int(t), xp, ldx, ffi.from_buffer("float[]", w), float(eps), n, k,
                                         ffi.from_buffer("float[]", xn), bufp, nth)
        if rc:
            self._check_rc(rc, "tl_act_prepare_rms", t, (("input rows of the RMS norm", x), ("RMS norm weights", w),
                                                         ("RMS-normalised rows", xn)))
        return Prepared(self, t, at, n, k, buf, bufp), xn

    def prepare_swiglu(self, weight_type: Any, g: np.ndarray, u: np.ndarray,
                       n_threads: int | None = None) -> tuple[Prepared, np.ndarray]:
        """(prepare(weight_type, xn), xn) for xn = silu(g) * u (tl_act_prepare_swiglu); g and u C-contiguous
        float32 [n, k] of the same shape."""
        t, _, _, at = self._info(weight_type)
        nth = self.n_threads if n_threads is None else _threads(n_threads, self.n_threads)
        if getattr(g, "shape", None) != getattr(u, "shape", None):  # first: numpy would broadcast some silently
            raise ShapeError(f"gate and up activations differ in shape: {getattr(g, 'shape', g)} vs "
                             f"{getattr(u, 'shape', u)}")
        for name, a in (("gate", g), ("up", u)):
            if (not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2 or not a.flags.c_contiguous
                    or not a.flags.aligned):
                raise ShapeError(f"{name} activations must be a C-contiguous float32 [n, k] array")
            _check_inside(a, f"{name} activations")
        n, k = g.shape
        if n < 1:
            raise ShapeError(f"activations have n = {n} rows; need at least 1")
        k = self._check_k(t, k)
        ffi = self.ffi
        buf, bufp = self._act_buffer(t, n, k)
        xn = np.empty((n, k), np.float32)
        rc = self.lib.tl_act_prepare_swiglu(self.ctx, int(t), ffi.from_buffer("float[]", g, require_writable=False),
                                            ffi.from_buffer("float[]", u, require_writable=False), n, k,
                                            ffi.from_buffer("float[]", xn), bufp, nth)
        if rc:
            self._check_rc(rc, "tl_act_prepare_swiglu", t, (("gate activations", g), ("up activations", u),
                                                            ("SwiGLU rows silu(gate) * up", xn)))
        return Prepared(self, t, at, n, k, buf, bufp), xn

    def gemm(self, weight_type: Any, w2d: np.ndarray, k: Any, prepared: Prepared, out: np.ndarray | None = None,
             n_threads: int | None = None) -> np.ndarray:
        """out[n, m] = X * W^T for weights w2d (uint8 [m, row_bytes], rows may be strided) of
        weight_type with k values per row, and activations from prepare()."""
        return self._run([self.plan(weight_type, w2d, k)], prepared, [out], n_threads)[0]

    def gemm_many(self, weights: Sequence[tuple[Any, np.ndarray]], k: Any, prepared: Prepared,
                  outs: Sequence[np.ndarray | None] | None = None, n_threads: int | None = None) -> list[np.ndarray]:
        """[gemm(t, w2d, k, prepared) for (t, w2d) in weights] as one C call (tl_gemm_many): for one token
        the rows of all weights are shared out to the threads as one job. Every weight type must take
        the activation type `prepared` holds; at most TL_GEMM_MANY_MAX weights; bit-identical results."""
        if not 1 <= len(weights) <= self.lib.TL_GEMM_MANY_MAX:
            raise ShapeError(f"gemm_many takes 1..{self.lib.TL_GEMM_MANY_MAX} weights, got {len(weights)}")
        if outs is not None and len(outs) != len(weights):
            raise ShapeError(f"gemm_many got {len(weights)} weights but {len(outs)} outputs")
        return self._run([self.plan(t, w2d, k) for t, w2d in weights], prepared, outs, n_threads)

    def plan(self, weight_type: Any, w2d: np.ndarray, k: Any) -> "GemmPlan":
        """Weights checked once (type, shape, strides, memory) for any number of `run` calls: what decode
        does with every matrix of a model, once per token."""
        t, k, m, ldw, wp = self._weight_arg(weight_type, w2d, k)
        return GemmPlan(self, t, self._info(t)[3], w2d, k, m, ldw, wp)

    def run(self, plans: Sequence["GemmPlan"], prepared: Prepared, n_threads: int | None = None) -> list[np.ndarray]:
        """[gemm of each plan's weights with `prepared`]: one tl_gemm, or one tl_gemm_many for several (they must
        share the activation type and k). New [n, m] results."""
        if not 1 <= len(plans) <= self.lib.TL_GEMM_MANY_MAX:
            raise ShapeError(f"run takes 1..{self.lib.TL_GEMM_MANY_MAX} plans, got {len(plans)}")
        return self._run(plans, prepared, None, n_threads)

    def _run(self, plans: Sequence["GemmPlan"], prepared: Prepared, outs: Sequence[np.ndarray | None] | None,
             n_threads: int | None) -> list[np.ndarray]:
        """gemm / gemm_many / run: 1..TL_GEMM_MANY_MAX plans against `prepared`, into `outs` (each checked) or new
        arrays; one plan is a tl_gemm, several one tl_gemm_many."""
        nth = self.n_threads if n_threads is None else _threads(n_threads, self.n_threads)
        p0 = plans[0]
        for p in plans:
            if type(p) is not GemmPlan or p.lib is not self:
                raise ShapeError("plans must come from this library's plan()")
        n, bufp = self._act_arg(p0.t, p0.k, prepared)
        for p in plans[1:]:
            if p.at is not p0.at or p.k != p0.k:
                raise ShapeError(f"plans run together must share the activation type and k: {p.t.name} weights need "
                                 f"{p.at.name} activations and k = {p.k}, {p0.t.name} ones {p0.at.name} and k = {p0.k}")
        res: list[np.ndarray] = []
        for i, p in enumerate(plans):
            out = self._out_arg(outs[i] if outs is not None else None, n, p.m, p.w2d, prepared)
            if outs is not None and any(np.may_share_memory(out, o) for o in res):
                raise ShapeError("gemm_many outputs overlap each other")
            res.append(out)
        ffi = self.ffi
        ys = [ffi.from_buffer("float[]", o) for o in res]
        if len(plans) == 1:
            rc = self.lib.tl_gemm(self.ctx, int(p0.t), p0.wp, p0.ldw, p0.m, p0.k, bufp, n, ys[0], p0.m, nth)
        else:
            ms = [p.m for p in plans]
            rc = self.lib.tl_gemm_many(self.ctx, len(plans), [int(p.t) for p in plans], [p.wp for p in plans],
                                       [p.ldw for p in plans], ms, p0.k, bufp, n, ys, ms, nth)
        if rc:
            self._check_rc(rc, "tl_gemm_many" if len(plans) > 1 else "tl_gemm")
        return res

    def _weight_arg(self, weight_type: Any, w2d: np.ndarray, k: Any) -> tuple[GGMLType, int, int, int, Any]:
        """Checks weights w2d for tl_gemm: (type, k, m, row stride in bytes, C pointer)."""
        t, bs, ts, at = self._info(weight_type)
        k = self._check_k(t, k)
        rb = k // bs * ts
        m, wb = _matrix_shape(w2d, "weights", np.uint8, "raw uint8 bytes", ("m", "row_bytes"))
        if wb != rb:
            raise ShapeError(f"weight rows are {wb} bytes but {t.name} with k = {k} needs {rb}")
        sw0, sw1 = w2d.strides
        if sw1 != 1:
            raise ShapeError(f"weight rows must have contiguous bytes (inner stride {sw1})")
        ldw = sw0 if m > 1 else rb
        if ldw < rb:
            raise ShapeError(f"weight row stride {sw0} must be positive and >= the row size {rb}")
        if t == GGMLType.F32 and (_addr(w2d) % 4 or ldw % 4):
            raise ShapeError("f32 weight rows must be 4-byte aligned (address and row stride)")
        _check_inside(w2d, "weights")
        wspan = w2d if w2d.flags.c_contiguous else _byte_span(w2d)
        return t, k, m, ldw, self.ffi.from_buffer(wspan, require_writable=False)

    def _act_arg(self, t: GGMLType, k: int, prepared: Prepared) -> tuple[int, Any]:
        """Checks prepared activations for weights of type t and k: (n, C pointer)."""
        at = self._info(t)[3]
        c = getattr(prepared, "_c", None)
        if (type(prepared) is Prepared and prepared._owner is self and c is not None and c[0] is prepared.buf
                and c[2] is prepared.act_type and c[3] is prepared.n and c[4] is prepared.k
                and prepared.variant == self.variant):
            # made by this library's prepare() and unchanged since: only the match with the weights is left
            if at is not c[2] or k != c[4]:
                if at is not c[2]:
                    raise ShapeError(f"{t.name} weights need {at.name} activations, prepared ones are {c[2].name} "
                                     f"(prepared for {prepared.weight_type.name})")
                raise ShapeError(f"prepared activations have k = {c[4]}, weights have k = {k}")
            return c[3], c[1]
        if not isinstance(prepared, Prepared):
            raise ShapeError(f"prepared must come from KernelLib.prepare, got {type(prepared).__name__}")
        if prepared.variant != self.variant:
            raise ShapeError(f"activations were prepared by variant {prepared.variant!r}, not {self.variant!r}")
        if prepared.act_type != at:
            raise ShapeError(f"{t.name} weights need {at.name} activations, prepared ones are {prepared.act_type.name} "
                             f"(prepared for {prepared.weight_type.name})")
        if prepared.k != k or type(prepared.k) is not int:
            raise ShapeError(f"prepared activations have k = {prepared.k}, weights have k = {k}")
        n = prepared.n
        if type(n) is not int or n < 1:
            raise ShapeError(f"prepared activations have an invalid row count n = {n!r}")
        buf = prepared.buf
        # A Prepared is a plain object: check what C relies on, in case it was altered.
        if (type(buf) is not np.ndarray or buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.c_contiguous
                or buf.nbytes != self.lib.tl_act_bytes(self.ctx, int(t), n, k)):
            raise ShapeError("prepared activation buffer was altered (type or size)")
        _check_inside(buf, "prepared activation buffer")
        bufp = self.ffi.from_buffer(buf)
        if int(self.ffi.cast("uintptr_t", bufp)) % _ALIGN:
            raise ShapeError("prepared activation buffer was altered (not 64-byte aligned)")
        return n, bufp

    @staticmethod
    def _out_arg(out: np.ndarray | None, n: int, m: int, w2d: np.ndarray, prepared: Prepared) -> np.ndarray:
        """A new [n, m] float32 result, or `out` checked to be a writable one that overlaps no input."""
        if out is None:
            return np.empty((n, m), dtype=np.float32)
        if not isinstance(out, np.ndarray):
            raise ShapeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.dtype != np.float32:
            raise ShapeError(f"out must be float32, got {out.dtype}")
        if out.shape != (n, m):
            raise ShapeError(f"out must have shape {(n, m)} [n_tokens, m], got {out.shape}")
        flags = out.flags
        if not flags.c_contiguous or not flags.aligned:
            raise ShapeError("out must be C-contiguous and aligned")
        if not flags.writeable:
            raise ShapeError("out is read-only")
        _check_inside(out, "out")
        if np.may_share_memory(out, w2d) or np.may_share_memory(out, prepared.buf):
            raise ShapeError("out overlaps the weights or the activations")
        return out

    def float_pointer(self, a: Any, what: str, *, size: int | None = None, writable: bool = False) -> Any:
        """A C `float *` to a's first element, for an array C reads (or writes, `writable`) whole: float32, aligned,
        non-negative strides with a contiguous last axis, `size` elements if given, inside the memory it views.
        What the layer program (tl_layer_check / tl_layer_run) points at: norm vectors, biases, KV caches."""
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim < 1:
            raise ShapeError(f"{what} must be a float32 numpy array")
        if size is not None and a.size != size:
            raise ShapeError(f"{what} has {a.size} values, expected {size}")
        if (not a.flags.aligned or a.strides[-1] != 4 or any(st < 0 for st in a.strides)
                or (writable and not a.flags.writeable)):
            raise ShapeError(f"{what} must be an aligned{', writable' if writable else ''} float32 array with "
                             f"contiguous rows (strides {a.strides})")
        _check_inside(a, what)
        span = a if a.flags.c_contiguous else _byte_span(a)
        return self.ffi.cast("float *", self.ffi.from_buffer(span, require_writable=writable))

    def fma_peak(self, n_threads: int | None = None) -> float:
        """Measured FP32 FMA peak in GFLOP/s of this variant's vector unit (about 0.2 s)."""
        return float(self.lib.tl_fma_peak(_threads(n_threads, self.n_threads)))

    def _check_rc(self, rc: int, what: str, t: GGMLType | None = None,
                  inputs: Sequence[tuple[str, np.ndarray]] = ()) -> None:
        """Raise the documented error for a C status (TL_OK: nothing). For TL_ENONFINITE, `inputs` (name, array)
        are searched, in order, for the first non-finite value to name in the message (`t`: the weight type)."""
        if rc == TL_OK:
            return
        if rc == TL_ENONFINITE:
            raise NumericalError(_nonfinite_message(what, t, inputs))
        if rc == TL_UNSUPPORTED:
            raise UnsupportedError(f"{what}: not supported by variant {self.variant!r}")
        if rc == TL_ENOMEM:
            raise MemoryError(f"{what}: out of memory")
        raise ShapeError(f"{what}: rejected arguments (status {rc}); this is a tilellm bug: "
                         "Python should have caught it")


def _nonfinite_message(what: str, t: GGMLType | None, inputs: Sequence[tuple[str, np.ndarray]]) -> str:
    """One line for TL_ENONFINITE: which input held the first NaN / inf, where, and how many (only on the error
    path, so the search may cost what it likes)."""
    for name, a in inputs:
        bad = ~np.isfinite(a)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            n_nan = int(np.isnan(a).sum())
            where = ", ".join(map(str, at))
            return (f"{what}: the {name} are not finite: [{where}] is {float(a[at])} ({n_nan} NaN and "
                    f"{int(bad.sum()) - n_nan} inf among {a.size} values); the int8 activations of "
                    f"{t.name if t is not None else 'quantized'} weights cannot hold them (corrupt weights upstream?)")
    return (f"{what}: activations on their way to int8 are not finite (NaN or inf): corrupt weights or a "
            "numerical overflow in the model")
