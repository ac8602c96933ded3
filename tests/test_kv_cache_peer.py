"""q8_0 KV cache fidelity against llama.cpp's (issue #18): on the shared fixtures and Gemma 3 270M, the mean KL
divergence of the logits with a q8_0 K and V cache from those with an f32 cache is no larger in tilellm than in
llama.cpp for the same setting (scripts/kv_fidelity.py measures both; flash attention on in llama.cpp, which a
quantized V cache needs). Marked `peer`: needs llama-cpp-python (.ci/peer.sh)."""
from __future__ import annotations

import pytest
from conftest import script_module

pytestmark = pytest.mark.peer


def _script():
    return script_module("kv_fidelity")


def test_q8_0_kv_is_as_faithful_as_llama_cpp():
    pytest.importorskip("llama_cpp")
    res = _script().measure("q8_0")
    assert res, "no fixture found"
    for name, (ours, peer) in res.items():
        assert peer is not None and 0 < ours <= peer, f"{name}: ours {ours:.3e}, llama.cpp {peer:.3e}"
