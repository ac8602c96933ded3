"""The one-call decode step (layer programs: Backend.plan_layer / decode_layer, C tl_layer_check / tl_layer_run) on
every kernel backend: for LLaMA-2, LLaMA-3 (rope_freqs), Qwen2 (q/k/v biases, NEOX rope), DeepSeek-V2 (MLA in both
cache layouts, dense and MoE layers with shared experts, YaRN) and Gemma 3 (q/k norms, post norms, GELU gating,
sliding window, two rope bases), token-by-token logits and caches equal the step-by-step path's; several
sequences' tokens in one call equal each alone; it is used only where it applies; bad programs and arguments are
refused."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture_model, fixture_path, kernel_backends

from tilellm.errors import ShapeError

LLAMA = ["llama2-micro-q8_0", "llama2-micro-f32", "llama3-micro-q4_0", "qwen2-micro-q8_0"]
DEEPSEEK = ["deepseek2-micro-q8_0", "deepseek2-lite-micro-q8_0"]
IDS = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]


def _steps_only(m) -> None:
    """Make the model take the step-by-step path (no plans) until `_fused_again`."""
    m.__dict__["_plans_store"] = {(m.backend, m._program_key()): None}


def _fused_again(m) -> None:
    m.__dict__.pop("_plans_store", None)


def _decode(m, ids, fused: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits of ids[3:] decoded one by one after ids[:3], and the caches it leaves."""
    if not fused:
        _steps_only(m)
    try:
        m.reset()
        m.eval(ids[:3])
        logits = np.stack([m.eval([t]) for t in ids[3:]])
        return logits, {k: a[:, :len(ids)].copy() for k, a in m._cache_arrays().items()}
    finally:
        _fused_again(m)  # the model is shared by the session (conftest): leave it as found


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("name", LLAMA)
def test_llama_one_call_layers_equal_the_steps(name, be):
    m = fixture_model(name, be, 512)
    assert m._layer_plans() is not None, f"{be} should run {name}'s layers in one call"
    ids = [i % m.n_vocab for i in IDS]
    (fused, cf), (steps, cs) = _decode(m, ids, True), _decode(m, ids, False)
    # the same C steps in the same order; only the rope's products may round differently from numpy's (the
    # portable build does not fuse them into FMAs, numpy's complex multiply does; NEOX rope the other way
    # round): measured up to 3.6e-6 on logits of magnitude ~10, equal bits on the other fixtures
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused, steps, rtol=0, atol=2e-6 * np.abs(steps).max())
    for k in cf:  # and the caches it wrote are the ones the steps write (layer 0's v exactly: no rope touched it)
        np.testing.assert_allclose(cf[k], cs[k], rtol=0, atol=2e-6 * np.abs(cs[k]).max())
    assert np.array_equal(cf["v"][0], cs["v"][0])


def _as_accurate(fused: np.ndarray, steps: np.ndarray, ref: np.ndarray, what: str) -> None:
    """fused is as close to the float reference as the steps are: mean |Δ| within 1.25x (the ratio test_gemma3
    allows against llama.cpp's own two evaluation orders), argmax agreement at most one position lower."""
    ef, es = float(np.abs(fused - ref).mean()), float(np.abs(steps - ref).mean())
    assert ef <= 1.25 * es + 1e-6, f"{what}: one-call mean |Δ| to the reference {ef:.4g} > 1.25 x the steps' {es:.4g}"
    af, as_ = (float(np.mean(x.argmax(-1) == ref.argmax(-1))) for x in (fused, steps))
    assert af >= as_ - 1.0 / len(ref) - 1e-9, f"{what}: argmax agreement {af:.2f} < the steps' {as_:.2f}"


_REF_LOGITS: dict = {}


def _ref_decode(key, make, ids) -> np.ndarray:
    if key not in _REF_LOGITS:
        _REF_LOGITS[key] = _decode(make(), ids, False)[0]
    return _REF_LOGITS[key]


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("name", DEEPSEEK)
def test_deepseek2_one_call_layers_equal_the_steps(name, be):
    """MLA over the latent cache, dense and MoE layers (shared experts, sigmoid and softmax routing, expert
    groups): the programs' own f32 steps (RMS norm with a double sum, C SiLU, routing, attention) differ from numpy's
    in the last bits, which Q8 activations can turn into a flipped expert choice at a near tie (measured: top-2 gaps
    down to 1.4e-4 on these fixtures), as the deepseek2 tests say of the kernel backends. So: the first decoded token
    (no earlier flip) within the deepseek2 tests' 2e-5 of the steps, the caches it wrote too, and the whole run as
    close to the float reference backend as the steps are."""
    m = fixture_model(name, be, 512)
    assert m._layer_plans() is not None, f"{be} should run {name}'s layers in one call"
    assert any(B.router is not None for B in m.blocks) and any(B.router is None for B in m.blocks)
    ids = [i % m.n_vocab for i in IDS]
    (fused, cf), (steps, cs) = _decode(m, ids, True), _decode(m, ids, False)
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused[0], steps[0], rtol=0, atol=2e-5)
    for k in cf:  # the prompt's and the first decoded token's positions
        np.testing.assert_allclose(cf[k][:, :4], cs[k][:, :4], rtol=0, atol=2e-5 * max(1.0, np.abs(cs[k]).max()))
    ref = _ref_decode(name, lambda: fixture_model(name, "reference", 512), ids)
    _as_accurate(fused, steps, ref, f"{be}/{name}")


def test_deepseek2_expanded_cache_layout(tmp_path):
    """The attn_kv_b layout (expanded per-head K/V cache, key and value heads of different sizes): one-call layers
    against the steps on every kernel backend, as above."""
    from test_model_deepseek2 import _join_kv_b, _rewrite, _to_kv_b_layout

    from tilellm import backend as backends
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.deepseek2 import DeepSeek2Model

    path = tmp_path / "ds2-kvb.gguf"
    _rewrite(DEEPSEEK[0], path, _to_kv_b_layout, _join_kv_b)
    ids = [i % 1000 for i in IDS]
    ref = _decode(DeepSeek2Model(open_gguf(path), backends.get("reference"), n_ctx=64), ids, False)[0]
    for be in kernel_backends():
        m = DeepSeek2Model(open_gguf(path), backends.get(be, n_threads=2), n_ctx=64)
        assert not m.hparams.absorbed and m._layer_plans() is not None
        (fused, cf), (steps, cs) = _decode(m, ids, True), _decode(m, ids, False)
        np.testing.assert_allclose(fused[0], steps[0], rtol=0, atol=2e-5)
        for k in cf:
            np.testing.assert_allclose(cf[k][:, :4], cs[k][:, :4], rtol=0, atol=2e-5 * max(1.0, np.abs(cs[k]).max()))
        _as_accurate(fused, steps, ref, f"{be}/kv_b")


def _gemma(be: str):
    from tilellm import backend as backends
    from tilellm.llm.cli.default_model import default_model_path, is_available
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.gemma3 import Gemma3Model

    if not is_available():
        pytest.skip("Gemma 3 270M is the 'demo' extra")
    return Gemma3Model(open_gguf(default_model_path(progress=None)), backends.get(be, n_threads=2), n_ctx=64)


GEMMA_IDS = [2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 1689, 11, 1401, 506, 3358, 529, 10501]


@pytest.mark.parametrize("be", kernel_backends())
def test_gemma3_one_call_layers_equal_the_steps(be):
    """Gemma 3 270M: the programs' RMS norms, GELU and rope round differently from numpy's in the last bit (each
    layer's output within a few ulp of the steps'), and with Q8 activations this model amplifies a flipped rounding
    step to ~0.1 in the logits (test_gemma3). So: the first token within that, and the run as close to the float
    reference backend as the steps are. (The sliding window is held to numpy in test_layer_program and, shrunk,
    to the sequences alone in test_batch_forward.)"""
    m = _gemma(be)
    assert m._layer_plans() is not None
    (fused, _), (steps, _) = _decode(m, GEMMA_IDS, True), _decode(m, GEMMA_IDS, False)
    assert np.isfinite(fused).all()
    np.testing.assert_allclose(fused[0], steps[0], rtol=0, atol=0.5)
    ref = _ref_decode("gemma", lambda: _gemma("reference"), GEMMA_IDS)
    _as_accurate(fused, steps, ref, f"{be}/gemma3")


@pytest.mark.parametrize("name", ["qwen2-micro-q8_0", "deepseek2-micro-q8_0", "deepseek2-lite-micro-q8_0"])
def test_several_sequences_in_one_call_equal_each_alone(name):
    """Three sequences' next tokens through one decode_layer call per layer (their own slots and positions):
    each row has the bits of that token decoded alone."""
    bes = kernel_backends()
    if not bes:
        pytest.skip("no kernel backend here")
    m = fixture_model(name, bes[0], 512)
    prompts = [[1, 450, 4996], [1, 17354, 1701, 432, 9], [1, 278]]
    prompts = [[t % m.n_vocab for t in p] for p in prompts]
    nxt = [975 % m.n_vocab, 11203 % m.n_vocab, 29889 % m.n_vocab]
    alone = []
    for p, t in zip(prompts, nxt):
        m.reset()
        m.eval(p)
        alone.append(m.eval_hidden([t])[0])
    cache = m.new_slot_cache(3, 64)
    for s, p in enumerate(prompts):
        m.forward_batch(cache, p, [s] * len(p), list(range(len(p))), [])
    plans = m._plans_over(cache.arrays, True, cache.plans)
    assert plans is not None
    h = m._decode_planned(plans, m._embed(np.array(nxt)), np.array([len(p) for p in prompts]), np.arange(3))
    from tilellm.backend.ops import rms_norm

    got = rms_norm(h, m.out_norm, m.hparams.rms_eps)
    for i in range(3):
        assert np.array_equal(got[i], alone[i]), f"sequence {i} differs from its token decoded alone"


def test_where_it_does_not_apply():
    ref = fixture_model("llama2-micro-q8_0", "reference", 512)
    assert ref._layer_plans() is None  # the numpy backend has no one-call step
    bes = kernel_backends()
    if not bes:
        pytest.skip("no kernel backend here")
    from tilellm import backend as backends
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.llama import LlamaModel

    f = open_gguf(fixture_path("llama2-micro-q8_0.gguf"))
    m = LlamaModel(f, backends.get(bes[0], n_threads=2, act_rounding="ggml"), n_ctx=256, numerics="ggml")
    assert m._layer_plans() is None  # fp16 K/V rounding: the step path only


def test_decode_layer_refuses_bad_arguments():
    bes = kernel_backends()
    if not bes:
        pytest.skip("no kernel backend here")
    m = fixture_model("llama2-micro-q8_0", bes[0], 512)
    be, (P, *_) = m.backend, m._layer_plans()
    hp = m.hparams
    h = np.zeros(hp.n_embd, np.float32)
    cos, sin = m.rope.tables(np.arange(0, 1))
    with pytest.raises(ShapeError, match="outside the cache"):
        be.decode_layer(P, h, cos, sin, [m.n_ctx])
    with pytest.raises(ShapeError, match="slot"):
        be.decode_layer(P, h, cos, sin, [0], [1])
    with pytest.raises(ShapeError, match="h must be"):
        be.decode_layer(P, np.zeros(hp.n_embd + 1, np.float32), cos, sin, [0])
    with pytest.raises(ShapeError, match="cos must be"):
        be.decode_layer(P, h, cos.astype(np.float64), sin, [0])
    with pytest.raises(ShapeError, match="one position and one slot"):
        be.decode_layer(P, h, cos, sin, [0], [0, 0])
    h.setflags(write=False)
    with pytest.raises(ShapeError, match="read-only"):
        be.decode_layer(P, h, cos, sin, [0])
    other = fixture_model("llama2-micro-q8_0", bes[-1], 512)
    if other.backend is not be:
        with pytest.raises(ShapeError, match="this backend"):
            other.backend.decode_layer(P, np.zeros(hp.n_embd, np.float32), cos, sin, [0])


def test_bad_programs_are_refused():
    """A step reaching outside the token's row, a rope of another size, a cache that is not [n_slots, n_ctx, ...]:
    one ShapeError when the layer is planned, never a crash when it runs."""
    import dataclasses

    bes = kernel_backends()
    if not bes:
        pytest.skip("no kernel backend here")
    m = fixture_model("llama2-micro-q8_0", bes[0], 512)
    prog = m._layer_program(0, {k: a[0][None] for k, a in m._cache_arrays().items()})
    assert m.backend.plan_layer(prog) is not None
    assert [s.op for s in prog.steps[:7]] == ["matmul", "rope", "rope", "store", "store", "attention", "matmul"]
    for i, change in ((0, {"dst": prog.row}), (1, {"n": prog.n_rot + 2}), (3, {"c_off": 1}),
                      (5, {"src": prog.row - 1}), (5, {"n_head_kv": m.hparams.n_head + 1}), (6, {"pre": "rms"})):
        bad = m._layer_program(0, {k: a[0][None] for k, a in m._cache_arrays().items()})
        bad.steps[i] = dataclasses.replace(bad.steps[i], **change)
        with pytest.raises(ShapeError, match="tl_layer_check"):
            m.backend.plan_layer(bad)
    bad = m._layer_program(0, {"k": m.k_cache[0], "v": m.v_cache[0][None]})  # no slot axis: n_ctx mismatch
    with pytest.raises(ShapeError):
        m.backend.plan_layer(bad)
