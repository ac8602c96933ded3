"""The engine's step function: one forward pass over a batch of sequence pieces.

The scheduler (``engine.py``) decides, every step, which tokens of which slots to evaluate and hands
them to a :class:`ForwardRunner` as :class:`BatchEntry` rows; the runner returns the logits the
scheduler asked for. Everything else -- slots, queueing, sampling, text, stop strings, cancellation,
accounting -- lives in the scheduler, so a runner with a multi-sequence KV cache and a batched
decode replaces :class:`SerialRunner` without touching it (docs/serving.md, "Batching").

Each slot owns a KV cache (logically): ``cached(slot)`` tokens at positions ``0..n-1``. An entry
first truncates its slot's cache to ``keep`` tokens, then appends ``tokens`` at positions
``keep..keep+len(tokens)-1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["BatchEntry", "ForwardRunner", "SerialRunner"]


@dataclass(frozen=True)
class BatchEntry:
    """One sequence's share of a forward pass.

    ``slot``: whose KV cache; ``keep``: tokens of that cache kept (the rest is dropped first);
    ``tokens``: appended at positions ``keep...``; ``logits``: return the logits of the last one.
    """

    slot: int
    keep: int
    tokens: Sequence[int]
    logits: bool


class ForwardRunner(Protocol):
    """What the scheduler needs from the model. Used by the scheduler thread only."""

    n_ctx: int        #: positions per slot
    max_seqs: int     #: entries (distinct slots) one forward() accepts
    max_tokens: int   #: tokens one forward() accepts, summed over its entries

    def reusable(self, slot: int, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the slot's cache holds already and can keep (< len(tokens))."""
        ...

    def cached(self, slot: int) -> int:
        """Tokens in the slot's KV cache now (for metrics)."""
        ...

    def forward(self, batch: Sequence[BatchEntry]) -> list[np.ndarray | None]:
        """Evaluate ``batch``; per entry, float32 logits ``[n_vocab]`` of its last token, or None."""
        ...


class SerialRunner:
    """The first runner: one ``Model`` with one KV cache, one sequence per forward.

    Only the slot that used the model last keeps its cache; any other slot starts from position 0.
    Its cache can only grow or be emptied (the public ``Model`` has ``eval`` and ``reset``, no
    truncation), so a prompt reuses the cache only when it extends everything cached.
    Prompt chunks are ``n_batch`` tokens, the split ``Model.generate`` uses, so a greedy request
    gives ``generate``'s tokens bit for bit.
    """

    max_seqs = 1

    def __init__(self, model: Any) -> None:
        self._model = model
        self.n_ctx = int(model.n_ctx)
        self.max_tokens = int(model.n_batch)
        self._owner: int | None = None   # slot whose tokens are in the model's cache
        self._tokens: list[int] = []     # those tokens

    def reusable(self, slot: int, tokens: Sequence[int]) -> int:
        n = len(self._tokens)
        if slot != self._owner or n == 0 or n >= len(tokens):
            return 0
        return n if list(tokens[:n]) == self._tokens else 0

    def cached(self, slot: int) -> int:
        return len(self._tokens) if slot == self._owner else 0

    def forward(self, batch: Sequence[BatchEntry]) -> list[np.ndarray | None]:
        if len(batch) != 1:
            raise ValueError(f"SerialRunner evaluates one sequence per step, got {len(batch)}")
        e = batch[0]
        if not (e.slot == self._owner and e.keep == len(self._tokens)):
            if e.keep != 0:
                raise RuntimeError(f"slot {e.slot} asked to keep {e.keep} tokens the single cache does not hold")
            self._model.reset()
            self._owner, self._tokens = e.slot, []
        try:
            logits = self._model.eval(list(e.tokens))
        except BaseException:
            self._model.reset()  # the cache may hold part of the chunk: start over next time
            self._owner, self._tokens = None, []
            raise
        self._tokens.extend(int(t) for t in e.tokens)
        return [np.asarray(logits) if e.logits else None]
