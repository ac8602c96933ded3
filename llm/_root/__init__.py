"""tilellm: CPU inference for GGUF language models on hand-written C kernels.

    import tilellm
    model = tilellm.load("model.gguf")
    print(model.generate("Once upon a time", max_tokens=32).text)
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(*args, **kwargs):
    """Load a GGUF model; see :func:`tilellm.llm.load` for the arguments."""
    from tilellm.llm import load as _load

    return _load(*args, **kwargs)


__all__ = ["load", "__version__"]
