"""Typed getters for GGUF metadata values: a missing key or a value of the wrong type is a GGUFError naming it."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tilellm.quant.errors import GGUFError


def get(md: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    """md[key], or `default` when given (GGUFError for a missing required key)."""
    if key in md:
        return md[key]
    if default is ...:
        raise GGUFError(f"missing required metadata key {key!r}")
    return default


def int_at_least(md: Mapping[str, Any], key: str, low: int, default: Any = ...) -> int:
    """Metadata integer `key` >= `low` (GGUFError naming the key otherwise)."""
    v = get(md, key, default)
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise GGUFError(f"metadata {key!r} must be an integer, got {v!r}") from None
    if iv < low or iv != v:
        kind = "positive" if low == 1 else "non-negative" if low == 0 else f">= {low}"
        raise GGUFError(f"metadata {key!r} must be a {kind} integer, got {v!r}")
    return iv


def pos_int(md: Mapping[str, Any], key: str, default: Any = ...) -> int:
    """Metadata integer `key` >= 1."""
    return int_at_least(md, key, 1, default)


def nonneg_int(md: Mapping[str, Any], key: str, default: Any = ...) -> int:
    """Metadata integer `key` >= 0."""
    return int_at_least(md, key, 0, default)


def as_list(value: Any, key: str) -> list[Any]:
    """An array value as a Python list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise GGUFError(f"tokenizer metadata {key!r} must be an array, got {type(value).__name__}")


def as_str(value: Any) -> str:
    """A string value (bytes and uint8 arrays decoded as UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:  # raw string bytes
        return value.tobytes().decode("utf-8", errors="replace")
    raise GGUFError(f"expected a string in tokenizer metadata, got {type(value).__name__}")
