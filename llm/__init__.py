"""Models, tokenizers, sampling and the user API (``tilellm.llm.load``)."""
from .api import GenerationChunk, GenerationResult, Model, Timings, load

__all__ = ["load", "Model", "GenerationResult", "GenerationChunk", "Timings"]
