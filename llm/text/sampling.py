"""Token sampling with llama.cpp / llama-cpp-python semantics.

The chain, in order (the same order as llama-cpp-python's default sampler):

1. repeat penalty over the last ``repeat_last_n`` tokens of the history (prompt + generated):
   each distinct token seen there has its logit divided by ``repeat_penalty`` if positive and
   multiplied by it if not (so a penalty > 1 always makes the token less likely);
2. ``temperature <= 0``: greedy, return the argmax of the penalised logits;
3. top-k (``top_k = 0`` is off): keep the k largest logits;
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
from typing import Sequence

import numpy as np

__all__ = ["SamplingParams", "Sampler", "softmax"]


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array, in float64."""
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


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
        # frozen dataclass: normalise types through object.__setattr__
        for name, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                        ("min_p", min_p), ("repeat_penalty", repeat_penalty),
                        ("repeat_last_n", repeat_last_n)):
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
    ) -> None:
        self.params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n)
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
        """Return a float32 copy of ``logits`` with the repeat penalty applied."""
        out = np.array(logits, dtype=np.float32, copy=True).reshape(-1)
        p = self.params
        if p.repeat_penalty == 1.0 or p.repeat_last_n == 0 or len(history) == 0:
            return out
        window = history if p.repeat_last_n < 0 else history[-p.repeat_last_n:]
        ids = np.unique(np.asarray(window, dtype=np.int64))
        ids = ids[(ids >= 0) & (ids < out.shape[0])]
        vals = out[ids]
        # each distinct token is penalised once, however often it occurs
        out[ids] = np.where(vals <= 0, vals * p.repeat_penalty, vals / p.repeat_penalty)
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
        if not np.isfinite(scaled).all():  # a tiny temperature (1e-310) overflows: it is greedy in the limit
            return ids[:1], np.ones(1)
        probs = softmax(scaled)
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
