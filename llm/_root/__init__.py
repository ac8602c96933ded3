"""tilellm: CPU inference for GGUF language models on hand-written C kernels.

    import tilellm
    model = tilellm.load("model.gguf")
    print(model.generate("Once upon a time", max_tokens=32).text)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tilellm.llm.api import Model

__version__ = "0.1.0"


def load(*args: Any, **kwargs: Any) -> Model:
    """Load a GGUF model; see :func:`tilellm.llm.load` for the arguments.

    Imported on first call: every layer imports `tilellm.errors` (hence this package), so importing the
    model code here would make the lower layers import the upper ones."""
    from tilellm.llm.api import load as _load

    return _load(*args, **kwargs)


__all__ = ["load", "__version__"]
