"""Which model class runs which `general.architecture`: one static table."""
from __future__ import annotations

from typing import Any, Callable

from tilellm.quant.errors import UnsupportedError

from .deepseek2 import DeepSeek2Model
from .gemma2 import Gemma2Model
from .gemma3 import Gemma3Model
from .granite import GraniteModel
from .llama import LlamaModel, Qwen2Model
from .phi3 import Phi3Model
from .qwen3 import Qwen3Model
from .qwenmoe import Qwen2MoeModel, Qwen3MoeModel

# factory(file, backend, n_ctx, n_batch, numerics) -> a decoder (eval, reset, n_past, n_ctx, n_vocab)
ArchFactory = Callable[[Any, Any, int, int, str], Any]

ARCHITECTURES: dict[str, ArchFactory] = {
    "llama": LlamaModel,
    "qwen2": Qwen2Model,
    "qwen3": Qwen3Model,
    "qwen2moe": Qwen2MoeModel,
    "qwen3moe": Qwen3MoeModel,
    "phi3": Phi3Model,
    "gemma2": Gemma2Model,
    "gemma3": Gemma3Model,
    "granite": GraniteModel,
    "deepseek2": DeepSeek2Model,
}


def register(arch: str, factory: ArchFactory) -> None:
    """Make `factory` the model for architecture `arch` (an extension point for users; built-ins are above)."""
    ARCHITECTURES[arch] = factory


def model_class(arch: str) -> ArchFactory:
    """The model factory for `arch`, or UnsupportedError naming it and what is supported."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UnsupportedError(
            f"unsupported model architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}") from None
