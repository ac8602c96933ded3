"""The two things the server needs that ``tilellm``'s public API does not export yet.

Everything else the server uses is public (``tilellm.load`` and the ``Model`` methods). These two
live in modules that the ``llm/`` restructure moves, so they are imported here, in one place, from
either location; the lead can replace this file by public hooks (see docs/serving.md, "Hooks"):

* ``stream_decoder(model)`` -- an incremental detokenizer for generated text, the one
  ``Model.generate`` uses (``StreamDecoder(tokenizer, skip_special=True, continuation=True)``), so
  that the server's text is exactly ``generate``'s text for the same tokens;
* ``default_model_path()`` -- the embedded Gemma 3 270M (the ``demo`` extra), as ``llm-run`` uses it.
"""
from __future__ import annotations

import importlib
from typing import Any, Protocol

__all__ = ["TextDecoder", "stream_decoder", "default_model_path"]


class TextDecoder(Protocol):
    """Incremental detokenizer: ``feed`` never returns half a UTF-8 character."""

    def feed(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


def _first_attr(modules: tuple[str, ...], name: str) -> Any:
    errors = []
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the layout
            errors.append(f"{mod}.{name}: {e}")
    raise ImportError("tilellm.llm.server cannot find " + name + " (" + "; ".join(errors) + ")")


def stream_decoder(model: Any) -> TextDecoder:
    """A fresh decoder for text generated after a prompt, as ``Model.generate`` makes it."""
    cls = _first_attr(("tilellm.llm.text.tokenizer", "tilellm.llm.tokenizer"), "StreamDecoder")
    return cls(model.tokenizer, skip_special=True, continuation=True)


def default_model_path() -> str:
    """Path of the embedded default model; raises an error whose message says how to install it."""
    fn = _first_attr(("tilellm.llm.cli.default_model", "tilellm.llm.default_model"), "default_model_path")
    return str(fn())
