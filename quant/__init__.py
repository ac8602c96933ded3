"""GGML block formats: the type table, reference quantize/dequantize, zero-copy tensor views."""
from .codec import DEQUANTIZABLE, QUANTIZABLE, dequantize, quantize
from .tensor import TensorView
from .types import QK_K, TYPE_INFO, GGMLType, TypeInfo, row_bytes, type_from_any

__all__ = [
    "GGMLType", "TypeInfo", "TYPE_INFO", "QK_K", "row_bytes", "type_from_any",
    "quantize", "dequantize", "QUANTIZABLE", "DEQUANTIZABLE", "TensorView",
]
