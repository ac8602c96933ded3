"""Which backends exist, which this CPU can run, and picking one ("auto", a name, or $TILELLM_BACKEND)."""
from __future__ import annotations

import os
import platform

from tilellm import kernels
from tilellm.quant.errors import BackendUnavailableError

from .kernel import KernelBackend
from .protocol import Backend
from .reference import ReferenceBackend
from .threads import resolve_threads

ENV_VAR = "TILELLM_BACKEND"
ACT_ROUNDINGS = ("fine", "ggml")


def fallback_of(variant: str) -> str | None:
    """The variant `variant` hands the weight types it lacks: the one needing the most of its CPU features
    (and fewer): avx512 -> avx2 -> portable, sme2 -> sme -> neon -> portable. None for portable."""
    need = kernels.REQUIRES[variant]
    below = [v for v in kernels.VARIANTS if kernels.REQUIRES[v] < need]
    return max(below, key=lambda v: len(kernels.REQUIRES[v])) if below else None


def _preference_order() -> tuple[str, ...]:
    """Every kernel variant, best first: the fallback chains from their tops (variants nothing falls back to,
    in `kernels.VARIANTS` order), a variant several chains share (portable) once, after all of them."""
    falls = {fallback_of(v) for v in kernels.VARIANTS}
    order: list[str] = []
    for top in (v for v in kernels.VARIANTS if v not in falls):
        v: str | None = top
        while v is not None:
            if v in order:
                order.remove(v)  # shared by several chains (portable): last
            order.append(v)
            v = fallback_of(v)
    return tuple(order)


VARIANT_ORDER = _preference_order()


def _why_not(variant: str) -> str | None:
    """None if `variant` can run here, else the reason."""
    compiled = kernels.compiled()
    if variant not in compiled:
        return (f"the {variant!r} kernels were not compiled into this install "
                f"(compiled: {', '.join(compiled) or 'none'})")
    missing = kernels.REQUIRES[variant] - kernels.cpu_features()  # one table, in tilellm.kernels
    if missing:
        return f"this CPU ({platform.machine()}) lacks {', '.join(sorted(missing))} needed by {variant!r}"
    return None


def available() -> list[str]:
    """Backends this machine can run, best first (the reference backend is always last)."""
    names = [v for v in VARIANT_ORDER if _why_not(v) is None]
    return names + ["reference"]


def known() -> list[str]:
    """Every backend name, runnable here or not."""
    return list(VARIANT_ORDER) + ["reference"]


def _load_kernels(variant: str, n_threads: int, act_rounding: str) -> kernels.KernelLib:
    """The one place a compiled variant is loaded, with its thread count and activation rounding."""
    return kernels.load(variant, n_threads, act_rounding=act_rounding)


def _build(name: str, n_threads: int, act_rounding: str) -> Backend:
    if name == "reference":
        return ReferenceBackend(n_threads)
    fb_name = fallback_of(name)
    while fb_name is not None and _why_not(fb_name) is not None:
        fb_name = fallback_of(fb_name)
    fallback = _build(fb_name, n_threads, act_rounding) if fb_name else ReferenceBackend(n_threads)
    return KernelBackend(_load_kernels(name, n_threads, act_rounding), fallback)


def get(name: str | None = "auto", n_threads: int | None = None, *, act_rounding: str = "fine") -> Backend:
    """A backend by name, or the best available for "auto" (overridden by $TILELLM_BACKEND).

    `n_threads`: None for the physical cores. `act_rounding`: how kernel backends round the activations of
    quantized weights, "fine" (one scale per 16 values) or "ggml" (llama.cpp's, per 32 / 256 values).
    Raises BackendUnavailableError for an unknown name or one this install/CPU cannot run.
    """
    if name is None or name == "auto":
        name = os.environ.get(ENV_VAR, "").strip() or "auto"
    name = name.lower()
    n_threads = resolve_threads(n_threads)
    if act_rounding not in ACT_ROUNDINGS:
        raise ValueError(f"act_rounding must be one of {', '.join(ACT_ROUNDINGS)}, got {act_rounding!r}")
    if name == "auto":
        name = available()[0]
    if name not in known():
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(known())}")
    if name != "reference":
        why = _why_not(name)
        if why:
            raise BackendUnavailableError(f"backend {name!r} is not available: {why}")
    return _build(name, n_threads, act_rounding)
