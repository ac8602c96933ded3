"""Sampler: llama.cpp semantics, argument validation, statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tilellm.llm.text.sampling import Sampler, SamplingParams, softmax


def _logits(n: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, n).astype(np.float32)


def test_greedy_is_argmax() -> None:
    for seed in range(20):
        x = _logits(500, seed)
        for t in (0.0, -1.0):
            assert Sampler(temperature=t, seed=seed).sample(x) == int(np.argmax(x))


def test_greedy_ignores_rng_and_filters() -> None:
    x = _logits()
    s = Sampler(temperature=0, top_k=5, top_p=0.1, min_p=0.9)
    assert {s.sample(x) for _ in range(20)} == {int(np.argmax(x))}


def test_top_k_1_equals_greedy() -> None:
    for seed in range(20):
        x = _logits(300, seed)
        s = Sampler(temperature=1.5, top_k=1, top_p=1.0, min_p=0.0, seed=seed)
        assert s.sample(x) == int(np.argmax(x))


def test_seed_reproduces_and_differs() -> None:
    x = _logits(1000)
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    first = Sampler(**kw, seed=42).sample(x)
    s1, s2, s3 = Sampler(**kw, seed=42), Sampler(**kw, seed=42), Sampler(**kw, seed=43)
    seq1 = [s1.sample(x) for _ in range(50)]
    seq2 = [s2.sample(x) for _ in range(50)]
    seq3 = [s3.sample(x) for _ in range(50)]
    assert seq1 == seq2
    assert seq1[0] == first
    assert seq1 != seq3


def test_shared_generator_advances() -> None:
    rng = np.random.default_rng(7)
    x = _logits(1000)
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=rng)
    assert s.rng is rng
    draws = [s.sample(x) for _ in range(30)]
    assert len(set(draws)) > 1


def test_top_k_candidate_set() -> None:
    x = _logits(200, 3)
    ids, probs = Sampler(temperature=1.0, top_k=7, top_p=1.0, min_p=0.0).candidates(x)
    assert set(ids.tolist()) == set(np.argsort(-x)[:7].tolist())
    assert list(ids) == sorted(ids, key=lambda i: -x[i])  # sorted by logit
    assert probs.sum() == pytest.approx(1.0)


def test_top_p_candidate_set_exact() -> None:
    # probabilities 0.5, 0.25, 0.125, 0.0625, ... (logits = log p)
    p = np.array([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125])
    x = np.log(p).astype(np.float32)
    def cand(top_p: float) -> list[int]:
        ids, _ = Sampler(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0).candidates(x)
        return sorted(ids.tolist())
    # the token that makes the running sum reach top_p is kept, none after it
    assert cand(0.5) == [0]
    assert cand(0.6) == [0, 1]
    assert cand(0.75) == [0, 1]
    assert cand(0.76) == [0, 1, 2]
    assert cand(0.9) == [0, 1, 2, 3]
    assert cand(1.0) == [0, 1, 2, 3, 4, 5]
    assert cand(1e-9) == [0]  # always keeps one


def test_top_p_uses_unscaled_logits() -> None:
    # temperature is applied after top_p (llama.cpp order): a high temperature must not
    # widen the top-p set
    p = np.array([0.7, 0.2, 0.1])
    x = np.log(p).astype(np.float32)
    ids, probs = Sampler(temperature=100.0, top_k=0, top_p=0.6, min_p=0.0).candidates(x)
    assert ids.tolist() == [0]


def test_min_p_candidate_set_exact() -> None:
    p = np.array([0.40, 0.30, 0.15, 0.10, 0.039, 0.011])
    x = np.log(p).astype(np.float32)
    ids2, _ = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2).candidates(x)
    assert sorted(ids2.tolist()) == [0, 1, 2, 3]  # 0.08 threshold
    ids3, _ = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.3).candidates(x)
    assert sorted(ids3.tolist()) == [0, 1, 2]  # 0.12 threshold
    ids4, _ = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=1.0).candidates(x)
    assert ids4.tolist() == [0]


def test_filters_chain_in_order() -> None:
    # top_k first cuts to 3, then top_p renormalises over those 3
    p = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    x = np.log(p).astype(np.float32)
    ids, probs = Sampler(temperature=1.0, top_k=3, top_p=0.5, min_p=0.0).candidates(x)
    # over {0.3, 0.25, 0.2} renormalised: 0.4, 0.333, 0.267 -> 0.4 < 0.5, 0.733 >= 0.5
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(probs, [0.3 / 0.55, 0.25 / 0.55], rtol=1e-6)


def test_temperature_scales_final_probs() -> None:
    x = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    ids, probs = Sampler(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0).candidates(x)
    np.testing.assert_allclose(probs, softmax(x / 0.5), rtol=1e-6)


def test_repeat_penalty_math() -> None:
    x = np.array([2.0, -2.0, 1.0, 0.0, 3.0], dtype=np.float32)
    s = Sampler(repeat_penalty=2.0, repeat_last_n=64)
    out = s.apply_penalty(x, [0, 1, 1, 1, 3])
    # positive divided, negative (and zero) multiplied, each distinct token once
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, 0.0, 3.0])
    np.testing.assert_array_equal(x, [2.0, -2.0, 1.0, 0.0, 3.0])  # input untouched


def test_repeat_penalty_window() -> None:
    x = np.array([2.0, 2.0, 2.0, 2.0], dtype=np.float32)
    hist = [0, 1, 2, 3, 3]
    out = Sampler(repeat_penalty=2.0, repeat_last_n=2).apply_penalty(x, hist)
    np.testing.assert_allclose(out, [2.0, 2.0, 2.0, 1.0])  # only the last two tokens count
    out = Sampler(repeat_penalty=2.0, repeat_last_n=0).apply_penalty(x, hist)
    np.testing.assert_allclose(out, x)
    out = Sampler(repeat_penalty=2.0, repeat_last_n=-1).apply_penalty(x, hist)
    np.testing.assert_allclose(out, [1.0, 1.0, 1.0, 1.0])


def test_repeat_penalty_changes_greedy_choice() -> None:
    x = np.array([3.0, 2.0, 0.0], dtype=np.float32)
    s = Sampler(temperature=0, repeat_penalty=2.0)
    assert s.sample(x, []) == 0
    assert s.sample(x, [0]) == 1  # 3/2 = 1.5 < 2


def test_empirical_distribution_matches_softmax() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 8).astype(np.float32)
    t = 0.7
    s = Sampler(temperature=t, top_k=0, top_p=1.0, min_p=0.0, seed=123)
    n = 40000
    counts = np.bincount([s.sample(x) for _ in range(n)], minlength=8)
    expected = softmax(x / t) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with 7 dof: P(chi2 > 24.3) ~ 0.001
    assert chi2 < 24.3, (counts, expected)


def test_empirical_distribution_after_top_k() -> None:
    x = np.array([1.0, 0.5, 0.0, -0.5, -1.0], dtype=np.float32)
    s = Sampler(temperature=1.3, top_k=3, top_p=1.0, min_p=0.0, seed=5)
    n = 20000
    counts = np.bincount([s.sample(x) for _ in range(n)], minlength=5)
    assert counts[3] == 0 and counts[4] == 0
    expected = softmax(x[:3] / 1.3) * n
    chi2 = float(((counts[:3] - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # 2 dof, p ~ 0.001


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(top_k=-1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=-0.1), "top_p"),
        (dict(min_p=-0.01), "min_p"),
        (dict(min_p=1.01), "min_p"),
        (dict(repeat_penalty=0.0), "repeat_penalty"),
        (dict(repeat_penalty=-1.0), "repeat_penalty"),
        (dict(temperature=math.nan), "temperature"),
        (dict(temperature=math.inf), "temperature"),
        (dict(top_p=math.nan), "top_p"),
        (dict(min_p=math.nan), "min_p"),
        (dict(repeat_penalty=math.inf), "repeat_penalty"),
        (dict(repeat_last_n=-2), "repeat_last_n"),
        (dict(temperature="hot"), "temperature"),
        (dict(seed=-5), "seed"),
    ],
)
def test_invalid_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Sampler(**kwargs)


def test_params_defaults_are_llama_cpp_python() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n) == (
        0.8, 40, 0.95, 0.05, 1.0, 64)
