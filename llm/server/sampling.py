"""Per-sequence token sampling for the server.

One :class:`SequenceSampler` per generated sequence, each with its own random generator, so a
request's draws never depend on what else the engine is running. The chain is ``Model.generate``'s
own sampler (``tilellm.llm.text.sampling.Sampler``: logit bias, presence / frequency penalties over
the last ``repeat_last_n`` tokens of prompt + output, then top-k, top-p over the unscaled softmax,
min-p and temperature; ``temperature <= 0`` is the argmax), so a seeded request gives the tokens
``generate(..., seed=s)`` gives with the same settings and ``repeat_penalty=1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tilellm.llm.text.sampling import Sampler

__all__ = ["SamplingParams", "SequenceSampler"]

_TINY_TOP_P = 1e-300  # OpenAI allows top_p = 0, the sampler (0, 1]; both keep only the most likely token


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings of one request (already validated by the HTTP layer); ``generate``'s defaults.

    ``top_k = 0``, ``top_p = 1`` and ``min_p = 0`` switch the filter off; ``seed = None`` draws from
    fresh OS entropy; ``logit_bias`` is ``((token id, bias), ...)``.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    repeat_last_n: int = 64

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class SequenceSampler:
    """Draws one sequence's next tokens from logit rows."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._sampler = Sampler(params.temperature, params.top_k, max(params.top_p, _TINY_TOP_P), params.min_p,
                                1.0, params.repeat_last_n, seed=params.seed,
                                presence_penalty=params.presence_penalty,
                                frequency_penalty=params.frequency_penalty, logit_bias=dict(params.logit_bias))

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The next token id for the logits ``[n_vocab]`` of the sequence's last position; ``history`` (prompt +
        generated ids) is what the penalties look at."""
        return self._sampler.sample(np.asarray(logits, dtype=np.float32).reshape(-1), history)
