"""deepseek2 forward pass (MLA + MoE) against the fixtures' float32 transformers reference `hfdq`.

reference backend: within 1e-4 of `hfdq` at every position, same argmax, same greedy continuation up to near-ties,
for deepseek2-micro (V3 style: q LoRA, sigmoid router with bias and groups) and deepseek2-lite-micro (V2-Lite
style: plain attn_q, softmax router, F16 tensors). The older attn_kv_b layout is checked on a file rewritten from
the micro fixture (same weights, so the same reference). YaRN: its maths, and that a file asking for it gets it.
kernel backends: as close to `hfdq` as llama.cpp is (MoE advice of the fixtures README).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from _gguf_copy import write_gguf
from conftest import (
    check_greedy_continuation,
    check_prompt_logits,
    fixture_model,
    fixture_path,
    full_logit_checks,
    kernel_backends,
)

from tilellm import backend as backends
from tilellm.backend.ops import causal_attention
from tilellm.errors import GGUFError, UnsupportedError
from tilellm.llm.gguf.reader import open_gguf
from tilellm.llm.models.architectures import model_class
from tilellm.llm.models.deepseek2 import DeepSeek2HParams, DeepSeek2Model, mqa_attention
from tilellm.llm.models.yarn import YarnParams, corr_dims, yarn_inv_freq, yarn_mscale

FIXTURES = ["deepseek2-micro-q8_0", "deepseek2-lite-micro-q8_0"]
PROMPTS = range(4)
_refs: dict = {}


def _ref(name: str):
    if name not in _refs:
        _refs[name] = np.load(fixture_path(f"{name}.npz"))
    return _refs[name]


def _model(name: str, be: str = "reference", n_batch: int = 512):
    return fixture_model(name, be, n_batch)


def test_registered():
    assert model_class("deepseek2") is DeepSeek2Model


@pytest.mark.parametrize("name", FIXTURES)
def test_reference_backend_matches_transformers(name):
    ref = _ref(name)
    m = _model(name, n_batch=64)  # P3 (110 tokens) needs two batches
    assert m.hparams.absorbed and m.kv_cache.shape[-1] == m.hparams.kv_lora + m.hparams.n_rot
    check_prompt_logits(m, ref, PROMPTS)


@pytest.mark.parametrize("name", FIXTURES)
def test_reference_greedy_continuation(name):
    check_greedy_continuation(_model(name), _ref(name), (0, 3), name)


def test_batching_and_incremental_eval_agree():
    """One batch, 7-token batches and token by token read the latent cache the same way."""
    ids = _ref(FIXTURES[0])["token_ids_p3"][:30]
    a = _model(FIXTURES[0]).eval(ids, logits_all=True)
    b = _model(FIXTURES[0], n_batch=7).eval(ids, logits_all=True)
    m = _model(FIXTURES[0])
    c = np.stack([m.eval([x]) for x in ids])
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
    np.testing.assert_allclose(a, c, atol=2e-5, rtol=0)


@pytest.mark.parametrize("n_past, T, chunk", [(0, 37, 8), (5, 20, 7), (11, 1, 4), (0, 16, 128)])
def test_chunked_mqa_attention_equals_generic(n_past, T, chunk):
    rng = np.random.default_rng(n_past + T)
    H, D, Dv = 4, 24, 16
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((n_past + T, D)).astype(np.float32)
    v = rng.standard_normal((n_past + T, Dv)).astype(np.float32)
    want = causal_attention(q.copy(), k[:, None], v[:, None], n_past, 0.3)  # it may scale q in place
    np.testing.assert_allclose(mqa_attention(q, k, v, n_past, 0.3, chunk=chunk), want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- rewritten files (old layout, YaRN)
def _rewrite(src_name: str, dst, meta_edit, tensor_edit) -> None:
    """Copy a fixture GGUF (model keys, tensors as raw bytes) with metadata and tensors edited."""
    f = open_gguf(fixture_path(f"{src_name}.gguf"))
    md = {k: v for k, v in f.metadata.items() if not k.startswith(("tokenizer.", "general."))}
    meta_edit(md)
    tensors = dict(f.tensors)
    extra = tensor_edit(tensors)
    write_gguf(dst, "deepseek2", md, tensors, extra)


def _to_kv_b_layout(md: dict) -> None:
    H = md["deepseek2.attention.head_count"]
    md["deepseek2.attention.head_count_kv"] = H
    md["deepseek2.attention.key_length"] = md.pop("deepseek2.attention.key_length_mla")
    md["deepseek2.attention.value_length"] = md.pop("deepseek2.attention.value_length_mla")


def _join_kv_b(tensors: dict) -> dict:
    """attn_k_b [H, lora, nope] + attn_v_b [H, v, lora] -> attn_kv_b rows per head [k_nope (nope rows); v (v rows)]."""
    out = {}
    for name in [n for n in tensors if n.endswith("attn_k_b.weight")]:
        kb, vb = tensors.pop(name), tensors.pop(name.replace("attn_k_b", "attn_v_b"))
        nope, lora, H = kb.shape
        k = kb.dequantize().reshape(H, lora, nope).transpose(0, 2, 1)  # [H, nope, lora]
        v = vb.dequantize().reshape(H, -1, lora)  # [H, v, lora]
        out[name.replace("attn_k_b", "attn_kv_b")] = np.ascontiguousarray(
            np.concatenate([k, v], axis=1).reshape(-1, lora), dtype=np.float32)
    return out


def test_kv_b_layout_matches_transformers(tmp_path):
    """The pre-MLA-cache layout (attn_kv_b, head_count_kv = heads): expanded K/V cache, same logits."""
    name = FIXTURES[0]
    path = tmp_path / "ds2-kvb.gguf"
    _rewrite(name, path, _to_kv_b_layout, _join_kv_b)
    m = DeepSeek2Model(open_gguf(path), backends.get("reference"), n_ctx=128, n_batch=16, type_k="f32", type_v="f32")
    assert not m.hparams.absorbed and m.k_cache.shape[2] == m.hparams.n_head
    ref = _ref(name)
    for i in (0, 2):
        m.reset()
        logits = m.eval(ref[f"token_ids_p{i}"], logits_all=True)
        full_logit_checks(logits, ref, "hfdq", i, atol=1e-4)


def test_yarn_maths():
    """DeepSeek-V2-Lite's settings: rope 64 dims, base 10000, factor 40, original context 4096, log mul 0.0707."""
    y = YarnParams(factor=40.0, n_ctx_orig=4096, log_multiplier=0.0707)
    # d(beta) = 64 ln(4096 / (2 pi beta)) / (2 ln 10000): 10.47 for beta 32 -> 10; 22.52 for beta 1 -> 23
    assert corr_dims(64, 10000.0, 4096, 32.0, 1.0) == (10, 23)
    inv = yarn_inv_freq(64, 10000.0, y)
    base = 10000.0 ** (-np.arange(32) * 2 / 64)
    np.testing.assert_allclose(inv[:11], base[:11], rtol=1e-12)  # fast pairs: untouched
    np.testing.assert_allclose(inv[23:], base[23:] / 40, rtol=1e-12)  # slow pairs: interpolated
    keep = 1 - (16 - 10) / 13  # pair 16 is 6/13 of the way up the ramp
    np.testing.assert_allclose(inv[16], base[16] * keep + base[16] / 40 * (1 - keep), rtol=1e-12)
    assert yarn_mscale(y) == pytest.approx(1 + 0.0707 * math.log(40))
    assert yarn_mscale(None) == 1.0
    # factor 1 changes nothing
    np.testing.assert_allclose(yarn_inv_freq(64, 10000.0, YarnParams(1.0, 4096)), base, rtol=1e-12)


def test_yarn_file_is_applied(tmp_path):
    def add_yarn(md):
        md["deepseek2.rope.scaling.type"] = "yarn"
        md["deepseek2.rope.scaling.factor"] = 4.0
        md["deepseek2.rope.scaling.original_context_length"] = 32
        md["deepseek2.rope.scaling.yarn_log_multiplier"] = 0.1

    path = tmp_path / "ds2-yarn.gguf"
    _rewrite(FIXTURES[0], path, add_yarn, lambda t: {})
    m = DeepSeek2Model(open_gguf(path), backends.get("reference"), n_ctx=64, type_k="f32", type_v="f32")
    hp = m.hparams
    assert hp.yarn == YarnParams(4.0, 32, log_multiplier=pytest.approx(0.1))
    np.testing.assert_allclose(m.rope.inv_freq, yarn_inv_freq(16, 10000.0, hp.yarn))
    assert m.kq_scale == pytest.approx((1 + 0.1 * math.log(4.0)) ** 2 / math.sqrt(48), rel=1e-6)
    ref = _ref(FIXTURES[0])
    logits = m.eval(ref["token_ids_p0"], logits_all=True)
    # position 0 has no rotation and attends only to itself: YaRN cannot change it, but it must change the rest
    np.testing.assert_allclose(logits[0, ref["sample_ids"]], ref["hfdq_sample_logits_p0"][0], atol=1e-4, rtol=0)
    assert np.abs(logits[1:, ref["sample_ids"]] - ref["hfdq_sample_logits_p0"][1:]).max() > 1e-2


# ---------------------------------------------------------------- metadata errors
def _md_and_tensors():
    f = open_gguf(fixture_path(f"{FIXTURES[0]}.gguf"))
    return dict(f.metadata), dict(f.tensors)


@pytest.mark.parametrize("edit, err", [
    (lambda md, t: md.__setitem__("deepseek2.attention.head_count_kv", 8), GGUFError),  # MLA keys but MHA heads
    (lambda md, t: md.__setitem__("deepseek2.attention.key_length", 48), GGUFError),
    (lambda md, t: [md.pop(k) for k in ("deepseek2.attention.key_length_mla",  # k_b tensors without MLA keys
                                        "deepseek2.attention.value_length_mla")], GGUFError),
    (lambda md, t: [t.pop(n) for n in list(t) if "attn_k_b" in n], GGUFError),
    (lambda md, t: ([md.pop(k) for k in ("deepseek2.attention.key_length_mla", "deepseek2.attention.value_length_mla")],
                    [t.pop(n) for n in list(t) if "attn_k_b" in n or "attn_v_b" in n]), UnsupportedError),
    (lambda md, t: md.__setitem__("deepseek2.expert_gating_func", 3), UnsupportedError),
    (lambda md, t: md.__setitem__("deepseek2.rope.scaling.type", "longrope"), UnsupportedError),
    (lambda md, t: md.__setitem__("deepseek2.expert_group_used_count", 5), GGUFError),
])
def test_bad_metadata_is_rejected(edit, err):
    md, tensors = _md_and_tensors()
    DeepSeek2HParams.from_file(md, tensors, 4096)  # the unedited file is fine
    edit(md, tensors)
    with pytest.raises(err):
        DeepSeek2HParams.from_file(md, tensors, 4096)


# ---------------------------------------------------------------- kernel backends
# llama.cpp vs hfdq over the whole vocabulary at every prompt position (fixtures' compare.json, rows
# "lcpp_vs_hfdq"): max |Δ|, token-weighted mean |Δ|, lowest per-prompt argmax agreement
LLAMA_CPP_DELTA = {"deepseek2-micro-q8_0": (4.194, 0.11808, 0.82), "deepseek2-lite-micro-q8_0": (1.783, 0.11666, 0.76)}


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("name", FIXTURES)
def test_kernel_backends_as_close_as_llama_cpp(name, be):
    """Mean |Δ| over the whole vocabulary no larger than llama.cpp's (the issue's criterion). The max and the
    argmax agreement follow the README's MoE advice (a perturbed router flips experts at a few positions):
    max within 2x llama.cpp's, agreement at least llama.cpp's minus 0.05. Full rows of hfdq come from the
    reference backend, which test_reference_backend_matches_transformers pins to hfdq within 1e-4."""
    ref = _ref(name)
    m, mref = _model(name, be), _model(name, "reference")
    mx, tot, cnt, agree = 0.0, 0.0, 0, 1.0
    for i in PROMPTS:
        m.reset()
        mref.reset()
        logits = m.eval(ref[f"token_ids_p{i}"], logits_all=True)
        d = np.abs(logits - mref.eval(ref[f"token_ids_p{i}"], logits_all=True))
        mx, tot, cnt = max(mx, float(d.max())), tot + float(d.sum(dtype=np.float64)), cnt + d.size
        agree = min(agree, float(np.mean(logits.argmax(-1) == ref[f"hfdq_top32_ids_p{i}"][:, 0])))
    lmx, lmean, lagree = LLAMA_CPP_DELTA[name]
    assert tot / cnt <= lmean, f"{be}/{name}: mean |Δ| {tot / cnt:.4g} > llama.cpp's {lmean:.4g}"
    assert mx <= 2 * lmx, f"{be}/{name}: max |Δ| {mx:.3g} > 2 x llama.cpp's {lmx:.3g}"
    assert agree >= lagree - 0.05, f"{be}/{name}: argmax agreement {agree:.2f} < llama.cpp's {lagree:.2f} - 0.05"
