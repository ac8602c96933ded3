"""Checks before the KV cache is allocated: will it fit in memory, and is the context longer than the model
was trained for."""
from __future__ import annotations

import os
import warnings

from tilellm.quant.errors import ContextOverflowError


def _meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_left() -> int | None:
    """Bytes this process may still map under RLIMIT_AS (a sandbox's limit), else None."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm", "rb") as f:
            vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        return max(0, soft - vsize)
    except (ImportError, OSError, ValueError, IndexError):
        return None


def available_memory() -> int | None:
    """Bytes a new allocation can use: MemAvailable, capped by RLIMIT_AS headroom; None when unknown."""
    known = [v for v in (_meminfo_available(), _address_space_left()) if v is not None]
    return min(known) if known else None


def fmt_bytes(n: int) -> str:
    """`n` bytes in binary units (``"1.50 GiB"``)."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.2f} {unit}"
        x /= 1024
    return f"{x:.2f} TiB"  # pragma: no cover


def check_kv_cache(n_bytes: int, n_ctx: int, n_ctx_train: int, *, available: int | None = None) -> None:
    """ContextOverflowError if a KV cache of `n_bytes` for `n_ctx` positions cannot fit in the memory left
    (`available`: measured when None); a warning (as llama.cpp gives) when n_ctx exceeds the training context."""
    if n_ctx > n_ctx_train:
        warnings.warn(f"n_ctx ({n_ctx}) > the model's training context ({n_ctx_train}): possible training "
                      "context overflow, output past it may degrade", RuntimeWarning, stacklevel=3)
    avail = available_memory() if available is None else available
    if avail is not None and n_bytes > avail:
        per_tok = max(1, n_bytes // max(1, n_ctx))
        fits = avail // per_tok
        raise ContextOverflowError(
            f"the KV cache for n_ctx={n_ctx} needs {n_bytes} bytes ({fmt_bytes(n_bytes)}) but only {avail} bytes "
            f"({fmt_bytes(avail)}) of memory are available; use a smaller n_ctx (at most about {fits})")
