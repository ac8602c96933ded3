"""How many threads a backend runs with: the kernels' one default and range check (tilellm.kernels.threads)."""
from __future__ import annotations

from tilellm.kernels.threads import MAX_THREADS, default_threads, resolve_threads

__all__ = ["MAX_THREADS", "default_threads", "resolve_threads"]
