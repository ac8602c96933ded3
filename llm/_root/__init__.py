"""tilellm: CPU inference for GGUF language models on hand-written C kernels.

    import tilellm
    model = tilellm.load("model.gguf")
    print(model.generate("Once upon a time", max_tokens=32).text)

    from tilellm import Llama          # llama-cpp-python's API
    llm = Llama(model_path="model.gguf")
    print(llm("Q: Name the planets. A:", max_tokens=32)["choices"][0]["text"])
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tilellm.errors import (
    BackendUnavailableError,
    ContextOverflowError,
    GGUFError,
    GGUFFileNotFoundError,
    NumericalError,
    ShapeError,
    TileLLMError,
    UnsupportedError,
)

if TYPE_CHECKING:
    from tilellm.llm.api import Model, ModelState, supported_architectures
    from tilellm.llm.generation import GenerationChunk, GenerationResult, Timings, TokenLogprob
    from tilellm.llm.llama import Llama, LlamaState

__version__ = "0.1.0"

# Imported on first use: every layer imports `tilellm.errors` (hence this package), so importing the model code
# here would make the lower layers import the upper ones.
_LAZY = {
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


def load(
    path: str | os.PathLike[str],
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_batch: int = 512,
    backend: str = "auto",
    seed: int | None = None,
    *,
    tokenizer: bool | None = True,
    numerics: str = "default",
) -> Model:
    """Open a GGUF model for inference (the arguments: :func:`tilellm.llm.api.load`).

    ``n_ctx``: None → min(the model's context length, 4096), 0 → the model's. ``n_threads``: None → physical
    cores. ``n_batch``: prompt tokens per forward pass. ``backend``: "auto" or a name from
    ``tilellm.backend.available()``. ``seed``: the model's sampling generator (None = random). ``tokenizer``:
    True requires the file's, None uses it if present. ``numerics``: "default" or "ggml" (llama.cpp's rounding).
    """
    from tilellm.llm.api import load as _load

    return _load(path, n_ctx, n_threads, n_batch, backend, seed, tokenizer=tokenizer, numerics=numerics)


__all__ = [
    "load", "Model", "ModelState", "Llama", "LlamaState", "GenerationResult", "GenerationChunk", "Timings",
    "TokenLogprob", "supported_architectures", "__version__",
    "TileLLMError", "GGUFError", "GGUFFileNotFoundError", "NumericalError", "UnsupportedError",
    "ContextOverflowError", "ShapeError", "BackendUnavailableError",
]
