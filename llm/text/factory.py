"""The tokenizer a GGUF file describes: `load_tokenizer(metadata)` picks the class by `tokenizer.ggml.model`."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from tilellm.quant.errors import GGUFError, UnsupportedError

from ..gguf.metadata import as_str
from .bpe import BPETokenizer
from .spm import SPMTokenizer
from .tokenizer import Tokenizer

# tokenizer.ggml.model -> the class that implements it
TOKENIZER_MODELS: dict[str, Callable[[Mapping[str, Any]], Tokenizer]] = {"llama": SPMTokenizer, "gpt2": BPETokenizer}


def load_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """Build the tokenizer described by a GGUF metadata dict (``tokenizer.ggml.*`` keys).

    Raises:
        UnsupportedError: unknown ``tokenizer.ggml.model`` or ``tokenizer.ggml.pre``.
        GGUFError: missing or inconsistent tokenizer metadata.
    """
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise GGUFError("GGUF has no tokenizer.ggml.model")
    name = as_str(model, "tokenizer.ggml.model")
    cls = TOKENIZER_MODELS.get(name)
    if cls is None:
        raise UnsupportedError(f"unsupported tokenizer model {name!r} (supported: 'llama', 'gpt2')")
    return cls(metadata)
