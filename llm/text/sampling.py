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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["SamplingParams", "Sampler", "softmax", "log_softmax"]


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
        # frozen dataclass: normalise types through object.__setattr__
        for name, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                        ("min_p", min_p), ("repeat_penalty", repeat_penalty),
                        ("repeat_last_n", repeat_last_n), ("presence_penalty", presence),
                        ("frequency_penalty", frequency), ("typical_p", typical_p), ("logit_bias", bias)):
            object.__setattr__(self, name, v)

    @property
    def greedy(self) -> bool:
        """True when sampling degenerates to argmax."""
        return self.temperature <= 0.0


class Sampler:
    """Draws the next token from a logits vector.

    ``seed`` may be an int (reproducible), ``None`` (fresh OS entropy) or an existing
    ``numpy.random.Generator`` (shared state, e.g. one generator per model).
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
    ) -> None:
        self.params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                                     presence_penalty, frequency_penalty, typical_p, _check_bias(logit_bias))
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
        probs = softmax(vals / p.temperature)
        return ids, probs

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """Pick the next token id from ``logits`` given the token ``history``."""
        ids, probs = self.candidates(logits, history)
        if len(ids) == 1:
            return int(ids[0])
        cum = np.cumsum(probs)
        u = self.rng.random() * cum[-1]
        j = int(np.searchsorted(cum, u, side="right"))
        return int(ids[min(j, len(ids) - 1)])

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
