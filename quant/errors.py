"""The exception types tilellm raises for bad input.

Every error a user can provoke with a file, an argument or a prompt is one of these, so
callers (and the fuzz tests) can tell "your input is wrong" from "tilellm has a bug".
"""
from __future__ import annotations


class TileLLMError(Exception):
    """Base class of every documented tilellm error."""


class GGUFError(TileLLMError, ValueError):
    """The file is not a valid GGUF (bad magic, truncated, inconsistent sizes or offsets)."""


class GGUFFileNotFoundError(FileNotFoundError, GGUFError):
    """The model path does not exist: both a `FileNotFoundError` (errno ENOENT) and a `GGUFError`."""


class NumericalError(TileLLMError, ArithmeticError):
    """The forward pass produced NaN or infinite logits (e.g. corrupted weights in the file)."""


class UnsupportedError(TileLLMError, ValueError):
    """Valid input that tilellm does not handle: a tensor type, an architecture, a tokenizer."""


class ContextOverflowError(TileLLMError, ValueError):
    """More tokens than the context window holds."""


class ShapeError(TileLLMError, ValueError):
    """Arrays with the wrong dtype, shape, strides or size were passed to a kernel."""


class BackendUnavailableError(TileLLMError, RuntimeError):
    """The requested backend is unknown, not compiled, or this CPU cannot run it."""
