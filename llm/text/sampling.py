"""Token sampling with llama.cpp / llama-cpp-python semantics.

The chain, in order (the same order as llama-cpp-python's default sampler):

0. ``logit_bias`` ({token id: value}) is added to the logits;
1. penalties over the last ``repeat_last_n`` tokens of the history (prompt + generated):
   each distinct token seen there has its logit divided by ``repeat_penalty`` if positive and
   multiplied by it if not (so a penalty > 1 always makes the token less likely), then loses
   ``frequency_penalty`` times its count there plus ``presence_penalty`` (llama.cpp's penalties);
2. ``temperature <= 0``: greedy, return the argmax of the penalised logits;
3. top-k (``top_k = 0`` is off): keep the k largest logits;
3b. typical-p (``typical_p = 1.0`` is off): keep the tokens whose surprise is closest to the
   distribution's entropy, until their probability reaches ``typical_p``;
4. top-p (``top_p = 1.0`` is off): keep the smallest set of most likely tokens whose
   probability (softmax of the *unscaled* logits) reaches ``top_p``;
5. min-p (``min_p = 0`` is off): keep tokens whose probability is at least ``min_p`` times the
   most likely token's;
6. divide by ``temperature``, softmax, and draw with a ``numpy.random.Generator``.

Every filter keeps at least one token.

Mirostat (``mirostat_mode`` 1 or 2, Basu et al. 2020, as llama.cpp runs it) replaces steps 3-6: after the
bias, the penalties and the temperature, it truncates the distribution so that the *surprise* of the drawn
token (-log2 of its probability) stays near the target ``mirostat_tau``, adapting a running threshold ``mu``
(starting at 2 tau) by ``mirostat_eta`` times each step's error. Mode 2 keeps the tokens whose surprise is at
most ``mu``; mode 1 estimates the distribution's Zipf exponent from its 100 most likely tokens and keeps the
top k that exponent predicts for ``mu``. ``top_k``, ``top_p``, ``min_p`` and ``typical_p`` are not used then
(as in llama.cpp / llama-cpp-python); ``temperature <= 0`` is still greedy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["SamplingParams", "Sampler", "softmax", "log_softmax", "MIROSTAT_M"]

MIROSTAT_M = 100  # tokens mode 1 fits its Zipf exponent on (llama.cpp's m)


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array, in float64."""
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax of a 1-D array, in float64."""
    z = np.asarray(x, dtype=np.float64).reshape(-1)
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def _check_bias(logit_bias: Mapping[Any, Any] | None) -> tuple[tuple[int, float], ...]:
    """`logit_bias` ({id: bias}, ids as ints or decimal strings as in OpenAI's API) as sorted pairs."""
    if logit_bias is None:
        return ()
    if not isinstance(logit_bias, Mapping):
        raise ValueError(f"logit_bias must be a mapping of token id to bias, got {type(logit_bias).__name__}")
    out = {}
    for k, v in logit_bias.items():
        try:
            tid = int(k) if not isinstance(k, bool) else None
        except (TypeError, ValueError):
            tid = None
        if tid is None or tid < 0:
            raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
        b = float(v) if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) else None
        if b is None or math.isnan(b):
            raise ValueError(f"logit_bias[{k!r}] must be a number, got {v!r}")
        out[tid] = b
    return tuple(sorted(out.items()))


def _check_finite(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _check_int(name: str, value: int) -> int:
    # bool is an int subclass but passing True as top_k is almost certainly a mistake
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampler settings (llama-cpp-python names and defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    typical_p: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1

    def __post_init__(self) -> None:
        temperature = _check_finite("temperature", self.temperature)
        top_k = _check_int("top_k", self.top_k)
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
        top_p = _check_finite("top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1.0 disables it), got {top_p}")
        min_p = _check_finite("min_p", self.min_p)
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {min_p}")
        repeat_penalty = _check_finite("repeat_penalty", self.repeat_penalty)
        if repeat_penalty <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0 (1.0 disables it), got {repeat_penalty}")
        repeat_last_n = _check_int("repeat_last_n", self.repeat_last_n)
        if repeat_last_n < -1:
            raise ValueError(
                f"repeat_last_n must be >= -1 (-1 = whole history, 0 = off), got {repeat_last_n}"
            )
        presence = _check_finite("presence_penalty", self.presence_penalty)
        frequency = _check_finite("frequency_penalty", self.frequency_penalty)
        typical_p = _check_finite("typical_p", self.typical_p)
        if not 0.0 < typical_p <= 1.0:
            raise ValueError(f"typical_p must be in (0, 1] (1.0 disables it), got {typical_p}")
        bias = self.logit_bias if isinstance(self.logit_bias, tuple) else _check_bias(self.logit_bias)
        mode = _check_int("mirostat_mode", self.mirostat_mode)
        if mode not in (0, 1, 2):
            raise ValueError(f"mirostat_mode must be 0 (off), 1 or 2, got {mode}")
        tau = _check_finite("mirostat_tau", self.mirostat_tau)
        eta = _check_finite("mirostat_eta", self.mirostat_eta)
        if tau < 0.0 or eta < 0.0:
            raise ValueError(f"mirostat_tau and mirostat_eta must be >= 0, got {tau} and {eta}")
        # frozen dataclass: normalise types through object.__setattr__
        for name, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                        ("min_p", min_p), ("repeat_penalty", repeat_penalty),
                        ("repeat_last_n", repeat_last_n), ("presence_penalty", presence),
                        ("frequency_penalty", frequency), ("typical_p", typical_p), ("logit_bias", bias),
                        ("mirostat_mode", mode), ("mirostat_tau", tau), ("mirostat_eta", eta)):
            object.__setattr__(self, name, v)

    @property
    def greedy(self) -> bool:
        """True when sampling degenerates to argmax."""
        return self.temperature <= 0.0


class Sampler:
    """Draws the next token from a logits vector.

    ``seed`` may be an int (reproducible), ``None`` (fresh OS entropy) or an existing
    ``numpy.random.Generator`` (shared state, e.g. one generator per model).

    With mirostat the sampler has state: ``mu``, the running surprise threshold (``2 * mirostat_tau`` at
    first), updated by every :meth:`sample`; ``last_surprise`` is the surprise of the last drawn token.
    """

    def __init__(
        self,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: int | np.random.Generator | None = None,
        *,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        typical_p: float = 1.0,
        logit_bias: Mapping[Any, float] | None = None,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
    ) -> None:
        self.params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                                     presence_penalty, frequency_penalty, typical_p, _check_bias(logit_bias),
                                     mirostat_mode, mirostat_tau, mirostat_eta)
        self.mu = 2.0 * self.params.mirostat_tau
        self.last_surprise: float | None = None
        if isinstance(seed, np.random.Generator):
            self.rng = seed
        else:
            if seed is not None:
                seed = _check_int("seed", seed)
                if seed < 0:
                    raise ValueError(f"seed must be >= 0 or None (random), got {seed}")
            self.rng = np.random.default_rng(seed)

    # -- the chain -------------------------------------------------------------------------

    def apply_penalty(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """Return a float32 copy of ``logits`` with the logit bias and the penalties applied."""
        out = np.array(logits, dtype=np.float32, copy=True).reshape(-1)
        p = self.params
        for tid, b in p.logit_bias:
            if tid < out.shape[0]:
                out[tid] += np.float32(b)
        no_freq = p.presence_penalty == 0.0 and p.frequency_penalty == 0.0
        if (p.repeat_penalty == 1.0 and no_freq) or p.repeat_last_n == 0 or len(history) == 0:
            return out
        window = history if p.repeat_last_n < 0 else history[-p.repeat_last_n:]
        ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
        ok = (ids >= 0) & (ids < out.shape[0])
        ids, counts = ids[ok], counts[ok]
        vals = out[ids]
        if p.repeat_penalty != 1.0:
            # each distinct token is penalised once, however often it occurs
            vals = np.where(vals <= 0, vals * p.repeat_penalty, vals / p.repeat_penalty)
        if not no_freq:
            vals = vals - (counts * p.frequency_penalty + p.presence_penalty).astype(np.float32)
        out[ids] = vals
        return out

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Token ids that survive the filters and their final probabilities.

        Ids are sorted by decreasing logit; probabilities are softmax(logit / temperature)
        over the survivors. For greedy settings this is the single argmax token.
        """
        x = self.apply_penalty(logits, history)
        p = self.params
        if p.greedy:
            i = int(np.argmax(x))
            return np.array([i], dtype=np.int64), np.array([1.0])
        if p.mirostat_mode:
            return self._mirostat_candidates(x)
        n = x.shape[0]
        # top-k: argpartition avoids sorting the whole vocabulary
        if 0 < p.top_k < n:
            ids = np.argpartition(-x, p.top_k - 1)[: p.top_k]
        else:
            ids = np.arange(n)
        # stable sort so equal logits keep id order (deterministic across runs)
        ids = ids[np.argsort(-x[ids], kind="stable")]
        vals = x[ids].astype(np.float64)
        if p.typical_p < 1.0 and len(ids) > 1:
            ids, vals = _typical(ids, vals, p.typical_p)
        if p.top_p < 1.0:
            probs = softmax(vals)
            cum = np.cumsum(probs)
            # first position where the running sum reaches top_p; that token is kept
            last = int(np.searchsorted(cum, p.top_p, side="left")) + 1
            last = max(1, min(last, len(ids)))
            ids, vals = ids[:last], vals[:last]
        if p.min_p > 0.0:
            # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
            keep = vals >= vals[0] + math.log(p.min_p)
            keep[0] = True
            ids, vals = ids[keep], vals[keep]
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = vals / p.temperature
        # a tiny temperature (1e-310) overflows the best logit (vals[0]; -inf ones from logit_bias are fine):
        # greedy in the limit
        if np.isnan(scaled).any() or (np.isfinite(vals[0]) and not np.isfinite(scaled[0])):
            return ids[:1], np.ones(1)
        probs = softmax(scaled)
        return ids, probs

    def _mirostat_candidates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mirostat's truncation of softmax(`x` / temperature) for the current ``mu``: ids by decreasing
        probability and their renormalised probabilities."""
        p = self.params
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = x.astype(np.float64) / p.temperature
        if np.isnan(scaled).any() or not np.isfinite(scaled.max()):
            i = int(np.argmax(x))  # a temperature so small that the logits overflow: greedy in the limit
            return np.array([i], dtype=np.int64), np.ones(1)
        n = scaled.shape[0]
        if p.mirostat_mode == 2:
            # keep every token whose surprise -log2(p) is at most mu (at least the most likely one)
            logp = scaled - scaled.max()
            logp -= np.log(np.exp(logp).sum())
            keep = np.flatnonzero(-logp / math.log(2.0) <= self.mu)
            if keep.size == 0:
                keep = np.array([int(np.argmax(scaled))])
            ids = keep[np.argsort(-scaled[keep], kind="stable")]
        else:
            m = min(MIROSTAT_M, n)
            top = np.argpartition(-scaled, m - 1)[:m] if m < n else np.arange(n)
            top = top[np.argsort(-scaled[top], kind="stable")]
            top = top[np.isfinite(scaled[top])]  # masked tokens (-inf) say nothing about the distribution's shape
            k = self._mirostat1_k(scaled[top], n)
            if k <= len(top):
                ids = top[:k]
            else:
                ids = np.argpartition(-scaled, k - 1)[:k] if k < n else np.arange(n)
                ids = ids[np.argsort(-scaled[ids], kind="stable")]
        return ids.astype(np.int64), softmax(scaled[ids])

    def _mirostat1_k(self, top_logits: np.ndarray, n_vocab: int) -> int:
        """Mode 1's k: fit the Zipf exponent s of the most likely tokens (log-ratios of neighbouring
        probabilities against log-ratios of their ranks), then the k whose expected surprise is ``mu``."""
        if top_logits.shape[0] < 2:
            return 1
        i = np.arange(top_logits.shape[0] - 1, dtype=np.float64)
        t = np.log((i + 2.0) / (i + 1.0))
        b = top_logits[:-1] - top_logits[1:]  # log(p_i / p_{i+1}): the softmax's normaliser cancels
        s_hat = np.float64((t * b).sum() / (t * t).sum())
        eps = s_hat - 1.0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # numpy scalars: inf / nan, no raise
            k = ((eps * np.float64(2.0) ** self.mu) / (1.0 - np.float64(n_vocab) ** -eps)) ** (1.0 / s_hat)
        if np.isnan(k) or k >= n_vocab:  # a flat head (s = 0): nothing says where to cut
            return n_vocab
        return max(1, int(k))

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """Pick the next token id from ``logits`` given the token ``history`` (mirostat: and update ``mu``)."""
        ids, probs = self.candidates(logits, history)
        if len(ids) == 1:
            j = 0
        else:
            cum = np.cumsum(probs)
            u = self.rng.random() * cum[-1]
            j = min(int(np.searchsorted(cum, u, side="right")), len(ids) - 1)
        if self.params.mirostat_mode and not self.params.greedy:
            # the drawn token's surprise in the truncated distribution steers mu towards tau
            self.last_surprise = float(-math.log2(max(float(probs[j]), 1e-300)))
            self.mu -= self.params.mirostat_eta * (self.last_surprise - self.params.mirostat_tau)
        return int(ids[j])

    __call__ = sample


def _typical(ids: np.ndarray, vals: np.ndarray, typical_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Locally typical sampling: keep the tokens whose surprise (-log p) is closest to the entropy until their
    probability reaches `typical_p`; survivors are returned in decreasing-logit order."""
    logp = vals - vals.max()
    logp = logp - np.log(np.exp(logp).sum())
    probs = np.exp(logp)
    entropy = -(probs * logp).sum()
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    cum = np.cumsum(probs[order])
    last = max(1, min(int(np.searchsorted(cum, typical_p, side="left")) + 1, len(ids)))
    keep = np.sort(order[:last])  # back to decreasing-logit order
    return ids[keep], vals[keep]
