"""Reading GGUF files: the validated, memory-mapped reader, typed metadata getters, model hyper-parameters."""
from .reader import GGUFModelFile, open_gguf

__all__ = ["GGUFModelFile", "open_gguf"]
