"""Models, tokenizers, sampling and the user API (``tilellm.llm.load``, ``tilellm.llm.Llama``)."""
from .api import GenerationChunk, GenerationResult, Model, ModelState, Timings, load
from .generation import TokenLogprob
from .llama import Llama, LlamaState

__all__ = ["load", "Model", "ModelState", "Llama", "LlamaState", "GenerationResult", "GenerationChunk", "Timings",
           "TokenLogprob"]
