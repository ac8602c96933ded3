"""Per-sequence token sampling for the server.

One :class:`SequenceSampler` per generated sequence, each with its own random generator, so a
request's draws never depend on what else the engine is running. The chain is ``Model.generate``'s
(top-k, then top-p over the unscaled softmax, then min-p, then temperature; ``temperature <= 0`` is
the argmax), so a seeded request gives the tokens ``generate(..., seed=s)`` gives with the same
settings and ``repeat_penalty=1``. The batched engine will call :meth:`SequenceSampler.sample` on
one row of its logits per sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SamplingParams", "SequenceSampler"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request (already validated by the HTTP layer); ``generate``'s defaults.

    ``top_k = 0``, ``top_p = 1`` and ``min_p = 0`` switch the filter off; ``seed = None`` draws from
    fresh OS entropy.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


class SequenceSampler:
    """Draws one sequence's next tokens from logit rows."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray) -> int:
        """The next token id for the logits ``[n_vocab]`` of the sequence's last position."""
        x = np.asarray(logits, dtype=np.float32).reshape(-1)
        p = self.params
        if p.greedy:
            return int(np.argmax(x))
        n = x.shape[0]
        ids = np.argpartition(-x, p.top_k - 1)[: p.top_k] if 0 < p.top_k < n else np.arange(n)
        ids = ids[np.argsort(-x[ids], kind="stable")]  # equal logits keep id order
        vals = x[ids].astype(np.float64)
        if p.top_p < 1.0:
            cum = np.cumsum(_softmax(vals))
            keep = max(1, min(int(np.searchsorted(cum, p.top_p, side="left")) + 1, len(ids)))
            ids, vals = ids[:keep], vals[:keep]
        if p.min_p > 0.0:
            mask = vals >= vals[0] + math.log(p.min_p)
            mask[0] = True
            ids, vals = ids[mask], vals[mask]
        if len(ids) == 1:
            return int(ids[0])
        cum = np.cumsum(_softmax(vals / p.temperature))
        j = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
        return int(ids[min(j, len(ids) - 1)])
