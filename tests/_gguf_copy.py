"""Write a GGUF from metadata and tensors taken (as raw bytes) from another file: the tests' way to make edited
copies of a fixture (changed keys, extra or replaced tensors) with gguf's own writer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tilellm.quant import TensorView


def add_metadata(w: gguf.GGUFWriter, md: dict[str, Any]) -> None:
    """Each value with the GGUF type its Python type implies (ints outside uint32 as int64, sequences as arrays)."""
    for k, v in md.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v) if 0 <= v < 2**32 else w.add_int64(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        else:
            w.add_array(k, v.tolist() if isinstance(v, np.ndarray) else list(v))


def add_raw_tensor(w: gguf.GGUFWriter, name: str, t: TensorView) -> None:
    """A tensor of another file, its bytes unchanged (float types as arrays, block types as raw rows)."""
    raw = np.ascontiguousarray(t.data)
    if t.type.name in ("F32", "F16"):
        w.add_tensor(name, raw.view(np.float32 if t.type.name == "F32" else np.float16)
                     .reshape(tuple(reversed(t.shape))))
    else:
        w.add_tensor(name, raw.reshape(tuple(reversed(t.shape[1:])) + (t.row_bytes,)),
                     raw_dtype=gguf.GGMLQuantizationType(int(t.type)))


def write_gguf(dst: Path | str, arch: str, md: dict[str, Any], tensors: dict[str, TensorView],
               extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write `md` and `tensors` (copied raw) plus `extra` arrays to `dst`."""
    w = gguf.GGUFWriter(str(dst), arch)
    add_metadata(w, md)
    for name, t in tensors.items():
        add_raw_tensor(w, name, t)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)
