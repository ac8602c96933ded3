"""The backend interface: a small Backend protocol, the registry, the numpy reference backend."""
from .kernel import CARD_TYPES, KernelBackend
from .protocol import Backend, Prepared
from .reference import ReferenceBackend
from .registry import ENV_VAR, available, default_threads, get, known

__all__ = ["Backend", "Prepared", "ReferenceBackend", "KernelBackend", "CARD_TYPES", "available", "get", "known",
           "default_threads", "ENV_VAR"]
