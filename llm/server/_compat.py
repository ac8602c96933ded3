"""The two library pieces the server uses beyond ``tilellm.load`` and the ``Model`` methods.

* ``stream_decoder(model)`` -- an incremental detokenizer for generated text, the one
  ``Model.generate`` uses (``StreamDecoder(tokenizer, skip_special=True, continuation=True)``), so
  that the server's text is exactly ``generate``'s text for the same tokens;
* ``default_model_path()`` -- the embedded Gemma 3 270M (the ``demo`` extra), as ``llm-run`` uses it.
"""
from __future__ import annotations

from typing import Any

from tilellm.llm.cli.default_model import default_model_path as _default_model_path
from tilellm.llm.generation import TextDecoder
from tilellm.llm.text.tokenizer import StreamDecoder

__all__ = ["TextDecoder", "stream_decoder", "default_model_path"]


def stream_decoder(model: Any) -> TextDecoder:
    """A fresh decoder for text generated after a prompt, as ``Model.generate`` makes it."""
    return StreamDecoder(model.tokenizer, skip_special=True, continuation=True)


def default_model_path() -> str:
    """Path of the embedded default model; raises an error whose message says how to install it."""
    return str(_default_model_path())
