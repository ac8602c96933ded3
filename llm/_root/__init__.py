"""tilellm: CPU inference for GGUF language models on hand-written C kernels.

    import tilellm
    model = tilellm.load("model.gguf")
    print(model.generate("Once upon a time", max_tokens=32).text)

    from tilellm import Llama          # llama-cpp-python's API
    llm = Llama(model_path="model.gguf")
    print(llm("Q: Name the planets. A:", max_tokens=32)["choices"][0]["text"])
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tilellm.errors import *  # noqa: F403 - the error classes, listed once in tilellm.errors.__all__
from tilellm.errors import __all__ as _ERRORS

if TYPE_CHECKING:
    from tilellm.llm.api import Model, ModelState, load, supported_architectures
    from tilellm.llm.generation import GenerationChunk, GenerationResult, Timings, TokenLogprob
    from tilellm.llm.llama import Llama, LlamaState

__version__ = "0.1.0"

# Imported on first use: every layer imports `tilellm.errors` (hence this package), so importing the model code
# here would make the lower layers import the upper ones.
_LAZY = {
    "load": "tilellm.llm.api",
    "Model": "tilellm.llm.api", "ModelState": "tilellm.llm.api", "supported_architectures": "tilellm.llm.api",
    "GenerationResult": "tilellm.llm.generation", "GenerationChunk": "tilellm.llm.generation",
    "Timings": "tilellm.llm.generation", "TokenLogprob": "tilellm.llm.generation",
    "Llama": "tilellm.llm.llama", "LlamaState": "tilellm.llm.llama",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'tilellm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


__all__ = [
    "load", "Model", "ModelState", "Llama", "LlamaState", "GenerationResult", "GenerationChunk", "Timings",
    "TokenLogprob", "supported_architectures", "__version__",
    *_ERRORS,
]
