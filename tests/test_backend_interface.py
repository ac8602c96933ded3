"""The Backend base class is the interface: its required and optional methods, the defaults every backend
inherits, and the registry's variant order and fallbacks (derived from tilellm.kernels' one variant list)."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from tilellm import backend as backends
from tilellm import kernels
from tilellm.backend import Backend, KernelBackend, LayerProgram, ReferenceBackend
from tilellm.backend.ops import causal_attention, rms_norm, silu
from tilellm.errors import ShapeError, UnsupportedError
from tilellm.quant import GGMLType, TensorView, quantize

REQUIRED = {"supports", "prepare", "matmul"}
OPTIONAL = {"is_native", "matmul_many", "prepare_rms_norm", "prepare_swiglu", "attention", "plan_layer",
            "decode_layer"}


def test_required_and_optional_methods():
    assert Backend.__abstractmethods__ == REQUIRED
    methods = {n for n, f in inspect.getmembers(Backend, inspect.isfunction) if not n.startswith("_")}
    assert methods == REQUIRED | OPTIONAL
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]


def test_reference_backend_takes_every_default_and_kernel_backend_overrides_them():
    for name in OPTIONAL:
        assert getattr(ReferenceBackend, name) is getattr(Backend, name), name
        assert getattr(KernelBackend, name) is not getattr(Backend, name), name


def test_defaults_are_the_plain_steps():
    be = backends.get("reference")
    rng = np.random.default_rng(3)
    k = 64
    w = TensorView.from_bytes("w", (k, 5), GGMLType.Q8_0, quantize(rng.standard_normal((5, k)).astype(np.float32),
                                                                    GGMLType.Q8_0).reshape(-1))
    h = rng.standard_normal((2, k)).astype(np.float32)
    nw = np.linspace(0.5, 1.5, k, dtype=np.float32)
    assert not be.is_native(GGMLType.Q8_0)
    assert np.array_equal(be.prepare_rms_norm(h, nw, 1e-5, GGMLType.Q8_0).x, rms_norm(h, nw, 1e-5))
    g, u = rng.standard_normal((2, k)).astype(np.float32), rng.standard_normal((2, k)).astype(np.float32)
    assert np.array_equal(be.prepare_swiglu(g, u, GGMLType.Q8_0).x, silu(g) * u)
    with pytest.raises(ShapeError, match="differ in shape"):
        be.prepare_swiglu(g, u[:1], GGMLType.Q8_0)
    a, b = be.matmul_many([w, w], h)
    assert np.array_equal(a, be.matmul(w, h)) and np.array_equal(b, a)
    q, kv = rng.standard_normal((3, 4, 8)).astype(np.float32), rng.standard_normal((5, 2, 8)).astype(np.float32)
    assert np.array_equal(be.attention(q, kv, kv, 2, 0.3), causal_attention(q, kv, kv, 2, 0.3))
    prog = LayerProgram(k, 0)
    prog.matmul([w], LayerProgram.H, prog.buffer(5), k)
    assert be.plan_layer(prog) is None
    with pytest.raises(UnsupportedError):
        be.decode_layer(None, h[0], h[0], h[0], [0])  # type: ignore[arg-type]


# the order and fallbacks the registry had as literals before they were derived from kernels.VARIANTS / REQUIRES
OLD_ORDER = ["amx", "avx512", "avx2", "sme2", "sme", "neon", "portable"]
OLD_FALLBACK = {"amx": "avx512", "avx512": "avx2", "avx2": "portable", "sme2": "sme", "sme": "neon",
                "neon": "portable", "portable": None}


def test_registry_order_and_fallbacks_follow_the_kernel_variants():
    from tilellm.backend import registry

    assert set(kernels.VARIANTS) <= set(OLD_ORDER)
    assert backends.known() == [v for v in OLD_ORDER if v in kernels.VARIANTS] + ["reference"]
    for v in kernels.VARIANTS:
        want = OLD_FALLBACK[v]
        while want is not None and want not in kernels.VARIANTS:
            want = OLD_FALLBACK[want]
        assert registry.fallback_of(v) == want, v


def test_one_thread_count_and_its_check():
    assert backends.get("reference").n_threads == backends.default_threads()
    for be in [b for b in backends.available() if b != "reference"]:
        kb = backends.get(be, n_threads=3)
        assert kb.n_threads == 3 and kb.lib.n_threads == 3
    for bad in (0, -1, 1025, 2.0, True):
        with pytest.raises(ValueError, match="n_threads"):
            backends.get("reference", n_threads=bad)  # type: ignore[arg-type]


def test_one_thread_default_and_one_range_check():
    """n_threads has one default (the physical cores this process may use) and one range check, the kernels',
    which the backend registry re-exports; a kernel library loaded without a count takes that default."""
    from tilellm.backend import threads as backend_threads
    from tilellm.kernels import threads as kernel_threads

    assert backends.default_threads is kernels.default_threads is kernel_threads.default_threads
    assert backend_threads.resolve_threads is kernel_threads.resolve_threads
    runnable = [v for v in kernels.compiled() if kernels.REQUIRES[v] <= kernels.cpu_features()]
    if runnable:
        assert kernels.load(runnable[-1]).n_threads == kernels.default_threads()
    with pytest.raises(ValueError, match="n_threads"):
        backends.get("reference", n_threads=0)
