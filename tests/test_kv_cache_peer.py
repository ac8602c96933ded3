"""q8_0 KV cache fidelity against llama.cpp's (issue #18): on the shared fixtures and Gemma 3 270M, the mean KL
divergence of the logits with a q8_0 K and V cache from those with an f32 cache is no larger in tilellm than in
llama.cpp for the same setting (scripts/kv_fidelity.py measures both; flash attention on in llama.cpp, which a
quantized V cache needs). Marked `peer`: needs llama-cpp-python (.ci/peer.sh)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.peer


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "kv_fidelity.py"
    spec = importlib.util.spec_from_file_location("kv_fidelity", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_q8_0_kv_is_as_faithful_as_llama_cpp():
    pytest.importorskip("llama_cpp")
    res = _script().measure("q8_0")
    assert res, "no fixture found"
    for name, (ours, peer) in res.items():
        assert peer is not None and 0 < ours <= peer, f"{name}: ours {ours:.3e}, llama.cpp {peer:.3e}"
