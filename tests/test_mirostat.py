"""Mirostat sampling (modes 1 and 2): the truncated set, the surprise control, seeds, and the three ways to ask
for it (``Model.generate``, ``Llama``, ``llm-run --mirostat``)."""
from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest

import tilellm
from tilellm.llm.cli import run as cli
from tilellm.llm.text.sampling import MIROSTAT_M, Sampler, softmax

MODEL = os.path.join(os.path.dirname(__file__), "data", "llama2-micro-q8_0.gguf")


def _steps(n: int, vocab: int = 4000, seed: int = 0) -> list[np.ndarray]:
    """Logit rows of varying sharpness (Zipf-like heads plus noise), one per step."""
    rng = np.random.default_rng(seed)
    ranks = np.log(np.arange(1, vocab + 1, dtype=np.float64))
    rows = []
    for _ in range(n):
        s = rng.uniform(0.6, 1.6)  # Zipf exponent of this step
        rows.append((-(s * ranks) + rng.normal(0, 0.3, vocab))[rng.permutation(vocab)].astype(np.float32))
    return rows


def _surprises(mode: int, tau: float, rows: list[np.ndarray], seed: int = 1, eta: float = 0.1,
               temperature: float = 1.0) -> list[float]:
    """Per step: the truncated set must hold the drawn token; its surprise in that set's distribution."""
    s = Sampler(temperature=temperature, seed=seed, mirostat_mode=mode, mirostat_tau=tau, mirostat_eta=eta)
    out = []
    for x in rows:
        ids, probs = s.candidates(x)
        assert probs.sum() == pytest.approx(1.0)
        tok = s.sample(x)
        where = np.flatnonzero(ids == tok)
        assert where.size == 1, "the drawn token is outside the truncated set"
        out.append(-math.log2(probs[where[0]]))
        assert s.last_surprise == pytest.approx(out[-1])
    return out


@pytest.mark.parametrize("tau", [2.0, 3.0, 5.0])
def test_mode2_keeps_the_running_surprise_near_tau(tau: float) -> None:
    got = _surprises(2, tau, _steps(800))
    late = np.mean(got[200:])  # after mu has settled from its start at 2 tau
    assert abs(late - tau) < 0.35, (tau, late)
    # and not by luck of one stretch: every window of 150 steps stays close
    for i in range(200, 800, 150):
        assert abs(np.mean(got[i:i + 150]) - tau) < 0.8, (tau, i, np.mean(got[i:i + 150]))


def test_mode1_steers_the_surprise_towards_tau() -> None:
    for tau in (3.0, 5.0):
        late = np.mean(_surprises(1, tau, _steps(800, seed=2))[200:])
        assert abs(late - tau) < 1.0, (tau, late)


def test_mode2_truncated_set_is_every_token_at_most_mu_bits() -> None:
    s = Sampler(temperature=0.7, seed=3, mirostat_mode=2, mirostat_tau=4.0, mirostat_eta=0.2)
    for x in _steps(60, vocab=500, seed=4):
        mu = s.mu
        p = softmax(x.astype(np.float64) / 0.7)
        want = set(np.flatnonzero(-np.log2(p) <= mu).tolist()) or {int(np.argmax(x))}
        ids, probs = s.candidates(x)
        assert set(ids.tolist()) == want
        assert list(probs) == sorted(probs, reverse=True)  # most likely first
        np.testing.assert_allclose(probs, p[ids] / p[ids].sum(), rtol=1e-9)
        s.sample(x)


def test_mode1_truncated_set_is_a_top_k() -> None:
    s = Sampler(temperature=1.0, seed=5, mirostat_mode=1, mirostat_tau=5.0)
    sizes = set()
    for x in _steps(80, vocab=3000, seed=6):
        ids, _ = s.candidates(x)
        order = np.argsort(-x, kind="stable")
        assert set(ids.tolist()) == set(order[: len(ids)].tolist())
        sizes.add(len(ids))
        s.sample(x)
    assert len(sizes) > 3  # k adapts
    assert MIROSTAT_M == 100


@pytest.mark.parametrize("mode", [1, 2])
def test_seeded_mirostat_is_deterministic(mode: int) -> None:
    rows = _steps(100, vocab=1000, seed=7)

    def draw(seed: int) -> list[int]:
        s = Sampler(temperature=0.9, seed=seed, mirostat_mode=mode, mirostat_tau=4.0)
        return [s.sample(x) for x in rows]

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_greedy_ignores_mirostat_and_bad_settings_are_refused() -> None:
    x = _steps(1, vocab=300)[0]
    s = Sampler(temperature=0.0, mirostat_mode=2)
    assert s.sample(x) == int(np.argmax(x)) and s.mu == 10.0  # no draw, no update
    for bad in (dict(mirostat_mode=3), dict(mirostat_mode=-1), dict(mirostat_mode=2, mirostat_tau=-1.0),
                dict(mirostat_mode=1, mirostat_eta=float("nan")), dict(mirostat_mode=True)):
        with pytest.raises(ValueError, match="mirostat"):
            Sampler(**bad)


@pytest.fixture(scope="module")
def model() -> tilellm.Model:
    with tilellm.load(MODEL, n_threads=1) as m:
        yield m


def test_generate_llama_and_cli_agree_with_a_seed(model: tilellm.Model) -> None:
    kw = dict(max_tokens=24, temperature=1.0, seed=9, mirostat_mode=2, mirostat_tau=3.0, mirostat_eta=0.2)
    a = model.generate("Once upon a time", **kw)
    b = model.generate("Once upon a time", **kw)
    assert a.tokens == b.tokens and len(a.tokens) > 0
    c = model.generate("Once upon a time", **{**kw, "mirostat_mode": 1})
    assert c.tokens != a.tokens  # the two algorithms truncate differently
    # Llama passes the arguments through
    llm = tilellm.Llama(MODEL, n_ctx=256, n_threads=1, verbose=False)
    try:
        out = llm.create_completion("Once upon a time", **kw)
        assert out["choices"][0]["text"] == a.text
        streamed = "".join(ch["choices"][0]["text"] for ch in llm("Once upon a time", stream=True, **kw))
        assert streamed == a.text
    finally:
        llm.close()
    # llm-run --mirostat 2 --mirostat-lr ETA --mirostat-ent TAU
    err = io.StringIO()
    out_s = io.StringIO()
    code = cli.main([MODEL, "-p", "Once upon a time", "-n", "24", "--temp", "1", "-s", "9", "--mirostat", "2",
                     "--mirostat-lr", "0.2", "--mirostat-ent", "3", "--no-display-prompt", "-c", "256"],
                    stdout=out_s, stderr=err, stdin=io.StringIO())
    assert code == 0, err.getvalue()
    assert out_s.getvalue() == a.text + "\n"


def test_cli_refuses_a_bad_mirostat_mode_in_one_line() -> None:
    err = io.StringIO()
    code = cli.main([MODEL, "-p", "x", "-n", "2", "--mirostat", "3"], stdout=io.StringIO(), stderr=err,
                    stdin=io.StringIO())
    assert code != 0
    assert err.getvalue().count("\n") == 1 and "mirostat_mode" in err.getvalue(), err.getvalue()
