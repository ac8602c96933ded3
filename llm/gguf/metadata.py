"""Typed getters for GGUF metadata values: a missing key, a value of the wrong type (a string or array where a
number belongs, a bool or float where an integer belongs), a non-finite number or one out of range is a
GGUFError naming the key."""
from __future__ import annotations

import math
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


def _show(v: Any) -> str:
    """A short repr of a metadata value for an error message (arrays and long strings cut)."""
    s = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return s if len(s) <= 60 else s[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


def int_in(md: Mapping[str, Any], key: str, default: Any = ..., *, low: int | None = None,
           high: int | None = None) -> int:
    """Metadata integer `key` in [low, high] (GGUF stores integers as integer types: a bool, float or string is
    refused, as is anything out of range)."""
    if key not in md and default is not ...:
        return default
    v = get(md, key)
    if not _is_int(v):
        raise GGUFError(f"metadata {key!r} must be an integer, got {_show(v)}")
    iv = int(v)
    if (low is not None and iv < low) or (high is not None and iv > high):
        lo = "" if low is None else f">= {low}"
        hi = "" if high is None else f"<= {high}"
        raise GGUFError(f"metadata {key!r} must be an integer {' and '.join(x for x in (lo, hi) if x)}, got {iv}")
    return iv


def int_at_least(md: Mapping[str, Any], key: str, low: int, default: Any = ...) -> int:
    """Metadata integer `key` >= `low` (GGUFError naming the key otherwise)."""
    return int_in(md, key, default, low=low)


def pos_int(md: Mapping[str, Any], key: str, default: Any = ...) -> int:
    """Metadata integer `key` >= 1."""
    return int_in(md, key, default, low=1)


def nonneg_int(md: Mapping[str, Any], key: str, default: Any = ...) -> int:
    """Metadata integer `key` >= 0."""
    return int_in(md, key, default, low=0)


def float_in(md: Mapping[str, Any], key: str, default: Any = ..., *, low: float | None = None,
             high: float | None = None, low_open: bool = False) -> float:
    """Metadata number `key` (an integer or float type), finite and in [low, high] — (low, high] when
    `low_open`."""
    if key not in md and default is not ...:
        return default
    v = get(md, key)
    if not _is_number(v):
        raise GGUFError(f"metadata {key!r} must be a number, got {_show(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise GGUFError(f"metadata {key!r} must be finite, got {f}")
    if (low is not None and (f < low or (low_open and f == low))) or (high is not None and f > high):
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        raise GGUFError(f"metadata {key!r} must be {' and '.join(x for x in (lo, hi) if x)}, got {f}")
    return f


def pos_float(md: Mapping[str, Any], key: str, default: Any = ...) -> float:
    """Metadata number `key`, finite and > 0."""
    return float_in(md, key, default, low=0.0, low_open=True)


def bool_of(md: Mapping[str, Any], key: str, default: Any = ...) -> bool:
    """Metadata bool `key` (GGUF's bool type; integers 0 / 1 are accepted as older writers used them)."""
    if key not in md and default is not ...:
        return bool(default)
    v = get(md, key)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if _is_int(v) and int(v) in (0, 1):
        return bool(v)
    raise GGUFError(f"metadata {key!r} must be a bool, got {_show(v)}")


def str_of(md: Mapping[str, Any], key: str, default: Any = ...) -> str:
    """Metadata string `key`."""
    if key not in md and default is not ...:
        return default
    v = get(md, key)
    if isinstance(v, (str, bytes)) or (isinstance(v, np.ndarray) and v.dtype == np.uint8):
        return as_str(v, key)
    raise GGUFError(f"metadata {key!r} must be a string, got {_show(v)}")


def num_array(md: Mapping[str, Any], key: str, n: int, *, integer: bool = False) -> np.ndarray:
    """Metadata array `key` of `n` numbers (integers if `integer`), finite; int64 or float64."""
    v = md.get(key)
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in ("iu" if integer else "iuf"):
        arr = v
    else:
        items = as_list(v, key)
        if not all((_is_int(x) if integer else _is_number(x)) for x in items):
            kind = "integers" if integer else "numbers"
            raise GGUFError(f"metadata {key!r} must be an array of {kind}")
        arr = np.asarray(items, dtype=np.int64 if integer else np.float64)
        if arr.ndim != 1:
            arr = arr.reshape(-1)
    if arr.shape != (n,):
        raise GGUFError(f"metadata {key!r} has {arr.size} entries, expected {n}")
    if integer and arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
        raise GGUFError(f"metadata {key!r} has entries beyond int64's range")
    if not integer and not np.isfinite(arr.astype(np.float64)).all():
        raise GGUFError(f"metadata {key!r} has non-finite entries")
    return arr.astype(np.int64 if integer else np.float64)


def as_list(value: Any, key: str) -> list[Any]:
    """An array value as a Python list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise GGUFError(f"metadata {key!r} must be a one-dimensional array")
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise GGUFError(f"metadata {key!r} must be an array, got {type(value).__name__}")


def as_str(value: Any, key: str = "") -> str:
    """A string value (bytes and uint8 arrays decoded as UTF-8); `key` names the value in the error."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:  # raw string bytes
        return value.tobytes().decode("utf-8", errors="replace")
    where = f"metadata {key!r}" if key else "metadata"
    raise GGUFError(f"{where} must be a string, got {type(value).__name__} {_show(value)}")
