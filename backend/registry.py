"""Which backends exist, which this CPU can run, and picking one ("auto", a name, or $TILELLM_BACKEND)."""
from __future__ import annotations

import os
import platform

from tilellm.errors import BackendUnavailableError

from .protocol import Backend
from .reference import ReferenceBackend

# Kernel variants in preference order (best first) and the CPU features each needs.
VARIANT_ORDER = ("amx", "avx512", "avx2", "sme2", "sme", "neon", "portable")
# Where a variant hands the weight types it lacks (and small batches, if it chooses).
VARIANT_FALLBACK = {"amx": "avx512", "avx512": "avx2", "avx2": "portable", "sme2": "sme", "sme": "neon", "neon": "portable",
                    "portable": None}
ENV_VAR = "TILELLM_BACKEND"


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def _kernels():
    from tilellm import kernels

    return kernels


def _why_not(variant: str) -> str | None:
    """None if `variant` can run here, else the reason."""
    k = _kernels()
    compiled = k.compiled()
    if variant not in compiled:
        return f"the {variant!r} kernels were not compiled into this install (compiled: {', '.join(compiled) or 'none'})"
    missing = k.REQUIRES[variant] - k.cpu_features()  # one table, in tilellm.kernels
    if missing:
        return f"this CPU ({platform.machine()}) lacks {', '.join(sorted(missing))} needed by {variant!r}"
    return None


def available() -> list[str]:
    """Backends this machine can run, best first (the reference backend is always last)."""
    names = [v for v in VARIANT_ORDER if _why_not(v) is None]
    return names + ["reference"]


def known() -> list[str]:
    return list(VARIANT_ORDER) + ["reference"]


def _build(name: str, n_threads: int, act_rounding: str = "fine") -> Backend:
    if name == "reference":
        return ReferenceBackend(n_threads)
    from .kernel import KernelBackend

    fb_name = VARIANT_FALLBACK[name]
    while fb_name is not None and _why_not(fb_name) is not None:
        fb_name = VARIANT_FALLBACK[fb_name]
    fallback = _build(fb_name, n_threads, act_rounding) if fb_name else ReferenceBackend(n_threads)
    return KernelBackend(_kernels().load(name, act_rounding=act_rounding), n_threads, fallback)


def get(name: str | None = "auto", n_threads: int | None = None, *, act_rounding: str = "fine") -> Backend:
    """A backend by name, or the best available for "auto" (overridden by $TILELLM_BACKEND).

    Raises BackendUnavailableError for an unknown name or one this install/CPU cannot run.
    """
    if name is None or name == "auto":
        name = os.environ.get(ENV_VAR, "").strip() or "auto"
    name = name.lower()
    if n_threads is None:
        n_threads = default_threads()
    elif isinstance(n_threads, bool) or not isinstance(n_threads, int) or not 1 <= n_threads <= 1024:
        raise ValueError(f"n_threads must be an integer in 1..1024 (or None for all cores), got {n_threads!r}")
    if name == "auto":
        name = available()[0]
    if name not in known():
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(known())}")
    if name != "reference":
        why = _why_not(name)
        if why:
            raise BackendUnavailableError(f"backend {name!r} is not available: {why}")
    return _build(name, n_threads, act_rounding)


