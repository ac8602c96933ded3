"""Which model class runs which `general.architecture`."""
from __future__ import annotations

from typing import Any

from tilellm.errors import UnsupportedError

from .model import LlamaModel, Qwen2Model

ARCHITECTURES: dict[str, Any] = {"llama": LlamaModel, "qwen2": Qwen2Model}


def register(arch: str, cls: Any) -> None:
    """Make `cls(file, backend, n_ctx=..., n_batch=...)` the model for architecture `arch`."""
    ARCHITECTURES[arch] = cls


def model_class(arch: str) -> Any:
    """The model class for `arch`, or UnsupportedError naming it."""
    if arch == "deepseek2" and arch not in ARCHITECTURES:
        try:
            from . import deepseek2  # noqa: F401  (registers itself)
        except ImportError:
            pass
    if arch == "gemma3" and arch not in ARCHITECTURES:
        from . import gemma3  # noqa: F401  (registers itself)
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UnsupportedError(
            f"unsupported model architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}") from None
