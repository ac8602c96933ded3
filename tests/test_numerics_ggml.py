"""numerics="ggml": llama.cpp's rounding choices as an opt-in (activations per 32/256 values, fp16 GELU
table, fp16 K/V/q), so users can compare with llama.cpp; the default stays the more accurate one."""
from __future__ import annotations

import numpy as np
import pytest

import tilellm
from tilellm import backend as backends
from conftest import fixture_path
from tilellm import kernels
from tilellm.llm.layers import gelu_tanh, gelu_tanh_ggml


@pytest.fixture(autouse=True)
def _restore_rounding():
    yield
    kernels.set_act_rounding("fine")


def test_gelu_table_matches_ggml_definition():
    x = np.concatenate([np.linspace(-12, 12, 20001, dtype=np.float32), np.float32([-10, 10, 0, -0.0])])
    y = gelu_tanh_ggml(x)
    inside = (x > -10) & (x < 10)
    want = gelu_tanh(x[inside].astype(np.float16).astype(np.float32)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(y[inside], want)
    np.testing.assert_array_equal(y[x >= 10], x[x >= 10])
    assert (y[x <= -10] == 0).all()
    # coarser than the float GELU, but only at fp16 resolution
    err = np.abs(y[inside] - gelu_tanh(x[inside]))
    assert 0 < err.max() < 1e-2 * max(1.0, float(np.abs(x[inside]).max()))


def test_ggml_numerics_rounds_kv_and_changes_logits_slightly():
    path = fixture_path("llama2-micro-q8_0.gguf")
    ids = [1, 450, 3996, 1354, 1701, 432, 2204, 975, 278, 3366, 1203]
    be = "avx512" if "avx512" in backends.available() else "portable"
    with tilellm.load(path, backend=be, n_threads=2) as m:
        a = m._impl.eval(ids, logits_all=True)
        k_default = m._impl.k_cache[0, :len(ids)].copy()
    with tilellm.load(path, backend=be, n_threads=2, numerics="ggml") as m:
        assert m._impl.numerics == "ggml"
        b = m._impl.eval(ids, logits_all=True)
        k = m._impl.k_cache[0, :len(ids)]
        np.testing.assert_array_equal(k, k.astype(np.float16).astype(np.float32))  # fp16 K cache values
    assert not np.array_equal(k_default, k_default.astype(np.float16).astype(np.float32))  # default stays f32
    d = np.abs(a - b)
    assert d.max() > 0, "ggml numerics changed nothing"
    assert d.mean() < 0.05 * np.abs(a).mean(), d.mean()
    # loading with the default numerics resets the process-wide activation rounding
    with tilellm.load(path, backend=be, n_threads=2) as m:
        np.testing.assert_array_equal(m._impl.eval(ids, logits_all=True), a)


def test_numerics_is_validated():
    with pytest.raises(ValueError, match="numerics"):
        tilellm.load(fixture_path("llama2-micro-q8_0.gguf"), numerics="fast")


try:
    from tilellm.llm.default_model import default_model_path, is_available
except ImportError:  # pragma: no cover
    is_available = lambda: False  # noqa: E731

# llama.cpp's running perplexity after each 512-token chunk of the text below (llama-cpp-python 0.3.36,
# the method and script in docs/gemma3.md "Perplexity"), and transformers' float64 value (hf_reference.json)
LLAMACPP_PPL = [6.0761, 11.6157, 9.3307]
TEXT = __import__("pathlib").Path(__file__).parent / "data" / "text" / "declaration-of-independence.txt"


@pytest.mark.skipif(not is_available(), reason="Gemma 3 270M is the 'demo' extra")
def test_gemma3_perplexity_with_ggml_numerics_is_within_1pct_of_llamacpp():
    """Issue target: perplexity within 1 % of llama.cpp's on the same file and text. With llama.cpp's rounding
    choices (numerics="ggml") we are; the default arithmetic is closer to transformers' exact value instead
    (tests/test_gemma3_hf.py), and 3-4 % below llama.cpp."""
    from tilellm.llm.perplexity import perplexity

    with tilellm.load(default_model_path(), n_ctx=512, n_threads=2, numerics="ggml") as m:
        toks = m.tokenize(TEXT.read_text(encoding="utf-8"), add_bos=True, special=False)
        r = perplexity(m._impl, toks, 512, m.tokenizer.bos_id)
    assert r.n_chunks == 3
    assert abs(r.ppl / LLAMACPP_PPL[-1] - 1) < 0.01, (r.running, LLAMACPP_PPL)
    for ours, theirs in zip(r.running, LLAMACPP_PPL):  # every running value within 2 %
        assert abs(ours / theirs - 1) < 0.02, (r.running, LLAMACPP_PPL)
