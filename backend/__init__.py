"""The backend layer: the `Backend` interface, the numpy reference backend, the kernel backend, the registry."""
from .kernel import CARD_TYPES, KernelBackend
from .layer import LayerProgram, MoESpec
from .protocol import Activations, Backend, LayerPlan
from .reference import ReferenceBackend
from .registry import ENV_VAR, available, get, known
from .threads import default_threads

__all__ = ["Backend", "Activations", "LayerPlan", "LayerProgram", "MoESpec", "ReferenceBackend",
           "KernelBackend", "CARD_TYPES", "available", "get", "known", "default_threads", "ENV_VAR"]
