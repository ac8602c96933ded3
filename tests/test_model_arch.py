"""The architectures of issue 17 (qwen3, ...) against transformers and llama.cpp, from tests/data fixtures made by
scripts/make_arch_fixtures.py (seeded random tiny HF models converted by llama.cpp's converter; see
tests/data/arch-fixtures.md).

Per model: the f32 file within 1e-4 of transformers (`hf`), the q8_0 file within 1e-4 of transformers on its
dequantized weights (`hfdq`), greedy continuations equal, the kernel backends as close as llama.cpp, the batched
forward equal to each sequence alone, and the tokenizer equal to the HF tokenizer on the shared parity texts.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA, check_greedy_continuation, check_prompt_logits, fixture_model, fixture_path, kernel_backends

import tilellm
from tilellm import backend as backends
from tilellm.errors import GGUFError
from tilellm.llm.gguf.reader import open_gguf
from tilellm.llm.models.architectures import model_class
from tilellm.llm.text import load_tokenizer

# fixture model -> (GGUF architecture, the fixture vocabulary its tokenizer reuses)
MODELS = {"qwen3-micro": ("qwen3", "bpe-qwen2-4k"), "gemma2-micro": ("gemma2", "llama-spm-4k"),
          "phi3-micro": ("phi3", "llama-spm-4k"), "granite-micro": ("granite", "llama-spm-4k"),
          "qwen3moe-micro": ("qwen3moe", "bpe-qwen2-4k"), "qwen2moe-micro": ("qwen2moe", "bpe-qwen2-4k")}
FILES = [f"{m}-{t}" for m in MODELS for t in ("f32", "q8_0")]
# HF tokenizer ids that differ from ours, by the shared parity files' known cause (tests/data/arch-fixtures.md)
KNOWN_TOKENIZER_DIFFS = {"bpe-qwen2-4k": 2}  # HF applies NFC, llama.cpp (and we) do not


def _ref(name: str):
    return np.load(fixture_path(f"{name}.npz"))


def _src(name: str) -> str:
    return "hf" if name.endswith("-f32") else "hfdq"


def _meta(name: str) -> dict:
    return json.loads(str(_ref(name)["meta_json"]))


def _prompts(ref) -> list[np.ndarray]:
    """The four shared prompts' token ids, then the fixture's extra prompts (MoE fixtures: see `extra_prompts` in
    scripts/make_arch_fixtures.py)."""
    return [ref[f"token_ids_p{i}"] for i in range(4)] + (list(ref["extra_ids"]) if "extra_ids" in ref else [])


@pytest.mark.parametrize("name", FILES)
def test_reference_backend_matches_transformers(name):
    m = fixture_model(name, "reference", n_batch=64)  # P3 needs two batches
    ref, src = _ref(name), _src(name)
    assert m.hparams.arch == MODELS[name.rsplit("-", 1)[0]][0]
    check_prompt_logits(m, ref, range(4), src)
    for j, ids in enumerate(_prompts(ref)[4:]):  # the extra prompts: top 8, logsumexp, argmax
        m.reset()
        lg = m.eval(ids, logits_all=True)
        top = ref[f"{src}_extra_top8_ids"][j]
        np.testing.assert_allclose(np.take_along_axis(lg, top, -1), ref[f"{src}_extra_top8_logits"][j], atol=1e-4)
        lse = np.logaddexp.reduce(lg.astype(np.float64), axis=-1)
        np.testing.assert_allclose(lse, ref[f"{src}_extra_logsumexp"][j], atol=1e-4)
        assert np.array_equal(lg.argmax(-1), top[:, 0])


@pytest.mark.parametrize("name", FILES)
def test_greedy_continuation_matches_transformers(name):
    check_greedy_continuation(fixture_model(name, "reference"), _ref(name), range(4), name, _src(name))


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("name", FILES)
def test_kernel_backends_as_close_as_llama_cpp(name, be):
    """Whole-vocabulary |Δ| against the reference backend (pinned to hf/hfdq above): f32 at float32 round-off,
    q8_0 within llama.cpp's own distance from hfdq (mean) and twice its largest, over every position of the
    fixture's prompts (the four shared ones and, for MoE models, the extra ones)."""
    ref = _ref(name)
    mref, m = fixture_model(name, "reference"), fixture_model(name, be)
    mx, tot, cnt = 0.0, 0.0, 0
    for ids in _prompts(ref):
        mref.reset()
        m.reset()
        d = np.abs(m.eval(ids, logits_all=True) - mref.eval(ids, logits_all=True))
        mx, tot, cnt = max(mx, float(d.max())), tot + float(d.sum(dtype=np.float64)), cnt + d.size
    if name.endswith("-f32"):
        assert mx < 1e-4 and tot / cnt < 1e-5, (mx, tot / cnt)
        return
    meta = _meta(name)
    lmx, lmean = meta["lcpp_vs_hfdq_max_abs"], meta["lcpp_vs_hfdq_mean_abs"]
    if "n_extra_tokens" in meta:  # llama.cpp's distance over the same positions: the token-weighted mean
        n4, ne = sum(meta["n_tokens"]), meta["n_extra_tokens"]
        lmean = (lmean * n4 + meta["lcpp_vs_hfdq_extra_mean_abs"] * ne) / (n4 + ne)
        lmx = max(lmx, meta["lcpp_vs_hfdq_extra_max_abs"])
    assert tot / cnt <= lmean, f"{be}/{name}: mean |Δ| {tot / cnt:.4g} > llama.cpp's {lmean:.4g}"
    assert mx <= 2 * lmx, f"{be}/{name}: max |Δ| {mx:.3g} > 2 x llama.cpp's {lmx:.3g}"


@pytest.mark.parametrize("be", kernel_backends() + ["reference"])
@pytest.mark.parametrize("model", list(MODELS))
def test_batched_rows_equal_each_sequence_alone(model, be):
    """forward_batch (several sequences, one pass) gives each row the bits of its sequence run alone."""
    m = fixture_model(f"{model}-q8_0", be)
    prompts = [[int(t) for t in _ref(f"{model}-q8_0")[f"token_ids_p{i}"][:n]] for i, n in ((0, 7), (1, 3), (2, 5))]
    want = []
    for p in prompts:
        m.reset()
        first = m.eval(p).copy()
        want.append((first, m.eval([int(np.argmax(first))]).copy()))
    cache = m.new_slot_cache(len(prompts))
    ids = [t for p in prompts for t in p]
    seq = [i for i, p in enumerate(prompts) for _ in p]
    pos = [j for p in prompts for j in range(len(p))]
    ends = list(np.cumsum([len(p) for p in prompts]) - 1)
    got = m.forward_batch(cache, ids, seq, pos, ends)
    nxt = [int(np.argmax(r)) for r in got]
    got2 = m.forward_batch(cache, nxt, list(range(len(prompts))), [len(p) for p in prompts], [0, 1, 2])
    for i in range(len(prompts)):
        assert np.array_equal(got[i], want[i][0]) and np.array_equal(got2[i], want[i][1]), f"sequence {i}"


@pytest.mark.parametrize("be", kernel_backends())
def test_qwen3_never_takes_the_one_call_decode_layer(be, monkeypatch):
    """The backend's one-call layer has no q/k norms: a qwen3 model must decode op by op (no plans), and its
    one-token steps must agree with the reference backend as closely as its prompt rows do."""
    m = fixture_model("qwen3-micro-f32", be)
    assert m._layer_plans() is None

    def refuse(*a, **k):
        raise AssertionError("the one-call decode layer was used for qwen3")
    monkeypatch.setattr(m.backend, "plan_layer", refuse)
    monkeypatch.setattr(m.backend, "decode_layer", refuse)
    ids = [int(t) for t in _ref("qwen3-micro-f32")["token_ids_p0"]]
    mref = fixture_model("qwen3-micro-f32", "reference")
    want = mref.eval(ids, logits_all=True)
    m.eval(ids[:-3])
    for k in range(3, 0, -1):  # one token at a time
        got = m.eval([ids[-k]])
        assert np.abs(got - want[-k]).max() < 1e-4


def test_qwen3_q_k_norms_are_required_and_used():
    """Without attn_q_norm the file is refused; with the norms set to one the logits change (they are used)."""
    f = open_gguf(fixture_path("qwen3-micro-f32.gguf"))
    ids = _ref("qwen3-micro-f32")["token_ids_p0"]
    ok = model_class("qwen3")(f, backends.get("reference"), n_ctx=256, type_k="f32", type_v="f32").eval(ids)
    m = model_class("qwen3")(f, backends.get("reference"), n_ctx=256, type_k="f32", type_v="f32")
    for B in m.blocks:
        B.q_norm = np.ones_like(B.q_norm)
    assert np.abs(m.eval(ids) - ok).max() > 1e-2
    del f.tensors["blk.1.attn_q_norm.weight"]
    with pytest.raises(GGUFError, match="attn_q_norm"):
        model_class("qwen3")(f, backends.get("reference"), n_ctx=256, type_k="f32", type_v="f32")


@pytest.mark.parametrize("model", list(MODELS))
def test_tokenizer_matches_the_hf_tokenizer(model):
    """The GGUF's tokenizer (a fixture vocabulary, rebuilt as an HF tokenizer for the conversion) against the HF
    tokenizer's ids on the shared parity texts: equal but for the parity file's documented differences."""
    md = open_gguf(fixture_path(f"{model}-q8_0.gguf")).metadata
    tok = load_tokenizer(md)
    cases = json.loads((DATA / f"{model}.hf_tok.json").read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 300
    bad = [c["text"][:40] for c in cases if tok.encode(c["text"], special=True) != c["hf_ids"]]
    vocab = MODELS[model][1]
    assert len(bad) <= KNOWN_TOKENIZER_DIFFS.get(vocab, 0), bad
    # and the same vocabulary as the fixture it reuses (whose llama.cpp parity tests/test_tokenizer.py checks)
    src = json.loads((DATA / f"{vocab}.vocab.json").read_text(encoding="utf-8"))
    assert list(md["tokenizer.ggml.tokens"]) == src["tokenizer.ggml.tokens"]
    if "tokenizer.ggml.merges" in src:
        assert list(md["tokenizer.ggml.merges"]) == src["tokenizer.ggml.merges"]


def test_supported_architectures_lists_exactly_the_table():
    from tilellm.llm.models.architectures import ARCHITECTURES

    assert set(tilellm.supported_architectures()) == set(ARCHITECTURES)
    assert {a for a, _ in MODELS.values()} <= set(ARCHITECTURES)


def test_gemma2_softcaps_and_window_are_used():
    """Dropping the attention cap, the window or the final cap changes the logits; the final cap bounds them."""
    import dataclasses

    ids = _ref("gemma2-micro-f32")["token_ids_p3"]  # longer than the 16-position window
    f = open_gguf(fixture_path("gemma2-micro-f32.gguf"))
    m = model_class("gemma2")(f, backends.get("reference"), n_ctx=256, type_k="f32", type_v="f32")
    g = m.gparams
    assert g.local_layers == (True, False, True) and g.window == 16
    assert g.attn_softcap == 5.0 and g.final_softcap == 10.0
    ok = m.eval(ids, logits_all=True)
    assert np.abs(ok).max() < 10.0
    for change in ({"attn_softcap": None}, {"window": 10**6}, {"final_softcap": None}):
        m.reset()
        m.gparams = dataclasses.replace(g, **change)
        assert np.abs(m.eval(ids, logits_all=True) - ok).max() > 1e-2, change
    m.gparams = g


def test_gemma2_softcap_attention_matches_the_plain_one_without_cap():
    from tilellm.backend.ops import causal_attention
    from tilellm.llm.models.gemma2 import softcap_attention

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((5, 4, 8), (12, 2, 8), (12, 2, 8)))
    for window in (None, 4):
        want = causal_attention(q, k, v, 7, 0.3, window=window)
        np.testing.assert_allclose(softcap_attention(q, k, v, 7, 0.3, None, window), want, atol=1e-6)
    capped = softcap_attention(q * 100, k, v, 7, 0.3, 1e-3)  # scores squashed to ~0: a plain mean of the values
    np.testing.assert_allclose(capped[-1], v.mean(0).repeat(2, 0), atol=1e-2)


@pytest.mark.parametrize("pre", ["smollm", "refact", "starcoder"])
def test_smollm_pre_tokenizer_matches_the_hf_tokenizer(pre):
    """SmolLM's (llama.cpp's smollm / refact / starcoder) pre-tokenizer: each digit alone, then GPT-2's split.
    The bpe-qwen2-4k vocabulary with that pre-tokenizer against an HF tokenizer built the same way (Digits +
    ByteLevel, no normaliser) on the 300 shared parity texts."""
    from _tokdata import vocab_metadata

    md = dict(vocab_metadata("bpe-qwen2-4k"), **{"tokenizer.ggml.pre": pre})
    tok = load_tokenizer(md)
    cases = json.loads((DATA / "smollm-pre.hf_tok.json").read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 300
    bad = [c["text"][:40] for c in cases if tok.encode(c["text"], special=True) != c["hf_ids"]]
    assert not bad, f"{len(bad)}/{len(cases)}: {bad[:5]}"


def test_phi3_fused_tensors_are_split_views_and_longrope_follows_the_context():
    """q/k/v and gate/up are zero-copy row views of attn_qkv / ffn_up; the short rope factors up to the original
    context, the long ones beyond it (llama.cpp's rule), the attention factor on the rotated dims."""
    from tilellm.llm.models.layers import Rope

    f = open_gguf(fixture_path("phi3-micro-f32.gguf"))
    md = f.metadata
    m = model_class("phi3")(f, backends.get("reference"), n_ctx=256, type_k="f32", type_v="f32")
    hp, B = m.hparams, m.blocks[0]
    assert "blk.0.attn_q.weight" not in f.tensors and hp.n_rot == hp.head_dim // 2
    qkv = f.tensors["blk.0.attn_qkv.weight"]
    assert np.shares_memory(B.wq.data, qkv.data) and np.shares_memory(B.wv.data, qkv.data)
    assert B.wq.n_rows + B.wk.n_rows + B.wv.n_rows == qkv.n_rows
    assert np.shares_memory(B.ffn.gate.data, f.tensors["blk.0.ffn_up.weight"].data)
    plain = Rope(hp.n_rot, hp.rope_base, "neox").inv_freq
    short = f.tensors["rope_factors_short.weight"].dequantize().reshape(-1)
    long = f.tensors["rope_factors_long.weight"].dequantize().reshape(-1)
    np.testing.assert_allclose(m.rope.inv_freq, plain / short, rtol=1e-12)
    assert m.rope_mscale == pytest.approx(md["phi3.rope.scaling.attn_factor"]) and m.rope_mscale > 1.0
    n_orig = int(md["phi3.rope.scaling.original_context_length"])
    big = model_class("phi3")(f, backends.get("reference"), n_ctx=n_orig + 1, type_k="f32", type_v="f32")
    np.testing.assert_allclose(big.rope.inv_freq, plain / long, rtol=1e-12)


def test_granite_multipliers_are_read_and_used():
    """The four Granite scalars come from the file, and each changes the logits."""
    ids = _ref("granite-micro-f32")["token_ids_p0"]
    f = open_gguf(fixture_path("granite-micro-f32.gguf"))
    m = model_class("granite")(f, backends.get("reference"), n_ctx=256, type_k="f32", type_v="f32")
    assert (m.embd_scale, m.residual_scale, m.attn_scale, m.logit_scale) == pytest.approx((2.0, 0.5, 0.05, 2.0))
    ok = m.eval(ids)
    for attr, plain in (("embd_scale", 1.0), ("residual_scale", 1.0), ("attn_scale", None), ("logit_scale", 1.0)):
        keep = getattr(m, attr)
        setattr(m, attr, plain)
        m.reset()
        assert np.abs(m.eval(ids) - ok).max() > 1e-2, attr
        setattr(m, attr, keep)


def test_qwen3moe_routing_renormalises_and_uses_the_q_k_norms():
    """qwen3moe renormalises its top-k weights (llama.cpp's rule for it); dropping that changes the logits."""
    ids = _ref("qwen3moe-micro-f32")["token_ids_p0"]
    f = open_gguf(fixture_path("qwen3moe-micro-f32.gguf"))
    m = model_class("qwen3moe")(f, backends.get("reference"), n_ctx=256)
    B = m.blocks[0]
    assert B.ffn.cfg.norm and B.ffn.cfg.n_used == 2 and B.ffn.cfg.n_expert == 8 and B.q_norm is not None
    ok = m.eval(ids)
    from dataclasses import replace
    for blk in m.blocks:
        blk.ffn.cfg = replace(blk.ffn.cfg, norm=False)
    m.reset()
    assert np.abs(m.eval(ids) - ok).max() > 1e-2


def test_qwen2moe_shared_expert_and_plain_top_k_are_read_and_used():
    """qwen2moe: expert and shared-expert sizes from the file, q/k/v biases, top-k weights not renormalised and
    a sigmoid-gated shared expert; renormalising or dropping the shared expert changes the logits."""
    from dataclasses import replace

    ids = _ref("qwen2moe-micro-f32")["token_ids_p0"]
    f = open_gguf(fixture_path("qwen2moe-micro-f32.gguf"))
    m = model_class("qwen2moe")(f, backends.get("reference"), n_ctx=256)
    B, md = m.blocks[0], f.metadata
    n_ff, n_sh = md["qwen2moe.expert_feed_forward_length"], md["qwen2moe.expert_shared_feed_forward_length"]
    assert not B.ffn.cfg.norm and B.ffn.cfg.n_used == 2 and B.ffn.cfg.n_expert == 8 and B.bq is not None
    assert B.ffn.gate.shape[1] == n_ff and B.ffn.shared.down.k == n_sh and n_ff != n_sh
    assert B.q_norm is None and "output.weight" in f.tensors  # untied head, as llama.cpp's qwen2moe requires
    ok = m.eval(ids)
    for change in ("renormalise", "no shared expert"):
        m2 = model_class("qwen2moe")(f, backends.get("reference"), n_ctx=256)
        for blk in m2.blocks:
            if change == "renormalise":
                blk.ffn.cfg = replace(blk.ffn.cfg, norm=True)
            else:
                blk.ffn.shared = None
        assert np.abs(m2.eval(ids) - ok).max() > 1e-2, change


def test_qwen_moe_bad_files_are_refused_with_a_clear_error():
    f = open_gguf(fixture_path("qwen2moe-micro-f32.gguf"))
    f.tensors["blk.1.ffn_gate_inp_shexp.weight"] = f.tensors["blk.1.attn_k.bias"]  # 32 values, n_embd is 64
    with pytest.raises(GGUFError, match="ffn_gate_inp_shexp"):
        model_class("qwen2moe")(f, backends.get("reference"), n_ctx=256)
    f = open_gguf(fixture_path("qwen3moe-micro-f32.gguf"))
    f.metadata["qwen3moe.expert_used_count"] = 9  # of 8 experts
    with pytest.raises(GGUFError, match="expert_used_count"):
        model_class("qwen3moe")(f, backends.get("reference"), n_ctx=256)
    f = open_gguf(fixture_path("qwen3moe-micro-f32.gguf"))
    del f.tensors["blk.0.ffn_down_exps.weight"]
    with pytest.raises(GGUFError, match="ffn_down_exps"):
        model_class("qwen3moe")(f, backends.get("reference"), n_ctx=256)
