"""The exception types tilellm raises, importable as ``tilellm.errors``.

They live in the bottom layer (``tilellm.quant.errors``) so every layer can raise them without
importing upwards; this module re-exports them for users.
"""
from tilellm.quant.errors import (
                                  BackendUnavailableError,
                                  ContextOverflowError,
                                  GGUFError,
                                  GGUFFileNotFoundError,
                                  NumericalError,
                                  ShapeError,
                                  TileLLMError,
                                  UnsupportedError,
)

__all__ = ["TileLLMError", "GGUFError", "GGUFFileNotFoundError", "NumericalError", "UnsupportedError",
           "ContextOverflowError", "ShapeError", "BackendUnavailableError"]
