"""Test data for the tokenizer tests: GGUF metadata reader and compact vocabulary files.

``read_metadata(path)`` reads a GGUF's key/value metadata into the plain dict that
``tilellm.llm.gguf.reader.open_gguf(path).metadata`` gives (strings as ``str``, string arrays as lists,
numeric arrays as numpy arrays), parsing each array once.

The tokenizer tests do not need the GGUF files: ``python tests/_tokdata.py`` extracts the
``tokenizer.*`` keys of the fixture GGUFs into ``tests/data/<tokenizer>.vocab.json`` and copies the
parity fixtures ``tokenizer-<name>.json`` next to them.
"""
from __future__ import annotations

import json
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = Path("/work/shared/fixtures")

# parity fixture name -> GGUF whose vocabulary it was made with
TOKENIZER_FIXTURES = {
    "llama-spm-4k": "llama2-micro-q4_0.gguf",
    "bpe-llama3-4k": "llama3-micro-q4_0.gguf",
    "bpe-qwen2-4k": "qwen2-micro-q8_0.gguf",
    "bpe-dsv3-4k": "deepseek2-micro-q8_0.gguf",
}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """GGUF metadata as a dict, read by the project's loader."""
    from tilellm.llm.gguf.reader import open_gguf

    return dict(open_gguf(str(path)).metadata)


def _to_json(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return {"dtype": str(v.dtype), "values": v.tolist()}
    return v


def _from_json(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"dtype", "values"}:
        return np.asarray(v["values"], dtype=v["dtype"])
    return v


@lru_cache(maxsize=None)
def vocab_metadata(name: str) -> dict[str, Any]:
    """The ``tokenizer.*`` metadata of the GGUF behind parity fixture ``name`` (cached)."""
    raw = json.loads((DATA / f"{name}.vocab.json").read_text(encoding="utf-8"))
    return {k: _from_json(v) for k, v in raw.items()}


@lru_cache(maxsize=None)
def parity_cases(name: str) -> list[dict[str, Any]]:
    """The cases of ``tokenizer-<name>.json``."""
    return json.loads((DATA / f"tokenizer-{name}.json").read_text(encoding="utf-8"))["cases"]


def extract(names: list[str] | None = None) -> None:
    """Write ``tests/data/<name>.vocab.json`` and copy ``tokenizer-<name>.json`` for each fixture."""
    DATA.mkdir(exist_ok=True)
    for name in names or list(TOKENIZER_FIXTURES):
        md = read_metadata(FIXTURES / TOKENIZER_FIXTURES[name])
        keep = {k: _to_json(v) for k, v in md.items() if k.startswith("tokenizer.")}
        keep["general.architecture"] = md.get("general.architecture")
        (DATA / f"{name}.vocab.json").write_text(json.dumps(keep, ensure_ascii=False), encoding="utf-8")
        shutil.copyfile(FIXTURES / f"tokenizer-{name}.json", DATA / f"tokenizer-{name}.json")
        print(f"{name}: {len(keep)} keys")


if __name__ == "__main__":
    extract(sys.argv[1:] or None)
