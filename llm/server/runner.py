"""The engine's step function: one forward pass over a batch of sequence pieces.

The scheduler (``engine.py``) decides, every step, which tokens of which slots to evaluate and hands
them to a :class:`ForwardRunner` as :class:`BatchEntry` rows; the runner returns the logits the
scheduler asked for. Everything else -- slots, queueing, sampling, text, stop strings, cancellation,
accounting -- lives in the scheduler, so a runner with a multi-sequence KV cache and a batched
decode replaces :class:`SerialRunner` / :class:`ModelPerSlotRunner` without touching it
(docs/serving.md, "Batching").

Each slot owns a KV cache (logically): ``cached(slot)`` tokens at positions ``0..n-1``. An entry
first truncates its slot's cache to ``keep`` tokens, then appends ``tokens`` at positions
``keep..keep+len(tokens)-1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["BatchEntry", "ForwardRunner", "SerialRunner", "ModelPerSlotRunner", "BatchedRunner", "supports_batching",
           "default_runner"]


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
    max_chunk: int    #: prompt tokens of one entry (chunked prefill)

    def reusable(self, slot: int, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the slot's cache holds already and can keep (< len(tokens))."""
        ...

    def cached(self, slot: int) -> int:
        """Tokens in the slot's KV cache now (for metrics)."""
        ...

    def forward(self, batch: Sequence[BatchEntry]) -> list[np.ndarray | None]:
        """Evaluate ``batch``; per entry, float32 logits ``[n_vocab]`` of its last token, or None."""
        ...


class _Cache:
    """One ``Model``'s single KV cache and the tokens in it.

    The public ``Model`` can ``eval`` (append) and ``reset``, not truncate, so the cache is kept only
    when an entry extends all of it; an entry with ``keep == 0`` starts it over.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.tokens: list[int] = []

    def reusable(self, tokens: Sequence[int]) -> int:
        n = len(self.tokens)
        if n == 0 or n >= len(tokens):
            return 0
        return n if list(tokens[:n]) == self.tokens else 0

    def run(self, e: BatchEntry) -> np.ndarray | None:
        if e.keep != len(self.tokens):
            if e.keep != 0:
                raise RuntimeError(f"slot {e.slot} asked to keep {e.keep} of {len(self.tokens)} cached tokens; "
                                   "Model cannot truncate its cache")
            self.clear()
        try:
            logits = self.model.eval(list(e.tokens))
        except BaseException:
            self.clear()  # the cache may hold part of the chunk: start over next time
            raise
        self.tokens.extend(int(t) for t in e.tokens)
        # a copy: the model may reuse its output buffer on the next eval, before the scheduler samples
        return np.array(logits, dtype=np.float32, copy=True) if e.logits else None

    def clear(self) -> None:
        self.tokens = []
        try:
            self.model.reset()
        except RuntimeError:  # a closed model
            pass


class SerialRunner:
    """The first runner: one ``Model`` with one KV cache, one sequence per forward.

    Only the slot that used the model last keeps its cache; any other slot starts from position 0.
    A prompt reuses the cache only when it extends everything cached. Prompt chunks are ``n_batch``
    tokens, the split ``Model.generate`` uses, so a greedy request gives ``generate``'s tokens bit for bit.
    """

    max_seqs = 1

    def __init__(self, model: Any) -> None:
        self._cache = _Cache(model)
        self._owner: int | None = None   # slot whose tokens are in the model's cache
        self.n_ctx = int(model.n_ctx)
        self.max_tokens = self.max_chunk = int(model.n_batch)

    def reusable(self, slot: int, tokens: Sequence[int]) -> int:
        return self._cache.reusable(tokens) if slot == self._owner else 0

    def cached(self, slot: int) -> int:
        return len(self._cache.tokens) if slot == self._owner else 0

    def forward(self, batch: Sequence[BatchEntry]) -> list[np.ndarray | None]:
        if len(batch) != 1:
            raise ValueError(f"SerialRunner evaluates one sequence per step, got {len(batch)}")
        e = batch[0]
        if e.slot != self._owner:
            if e.keep != 0:
                raise RuntimeError(f"slot {e.slot} asked to keep {e.keep} tokens the single cache does not hold")
            self._cache.clear()
            self._owner = e.slot
        return [self._cache.run(e)]


class ModelPerSlotRunner:
    """One ``Model`` (hence one KV cache) per slot; every step evaluates all entries, one after another.

    Active sequences advance together, a token each per step (a short request is not stuck behind a long
    one), and every slot keeps its own cache for prefix reuse. The weights are memory-mapped, so the
    models share them in the page cache; each has its own KV cache (``n_ctx`` positions). It is the
    multi-sequence runner without a batched forward pass: the batched runner keeps this interface and
    runs the step's rows as one matmul per layer (docs/serving.md). Prompt chunks are ``n_batch``
    tokens, as in ``generate``, so greedy output is ``generate``'s bit for bit.
    """

    def __init__(self, models: Sequence[Any]) -> None:
        if not models:
            raise ValueError("ModelPerSlotRunner needs one model per slot")
        self._caches = [_Cache(m) for m in models]
        self.n_ctx = min(int(m.n_ctx) for m in models)
        self.max_chunk = min(int(m.n_batch) for m in models)
        self.max_seqs = self.max_slots = len(models)
        self.max_tokens = self.max_chunk * self.max_seqs  # every entry can take a whole chunk

    def reusable(self, slot: int, tokens: Sequence[int]) -> int:
        return self._caches[slot].reusable(tokens)

    def cached(self, slot: int) -> int:
        return len(self._caches[slot].tokens)

    def forward(self, batch: Sequence[BatchEntry]) -> list[np.ndarray | None]:
        if len({e.slot for e in batch}) != len(batch):
            raise ValueError("one entry per slot and step")
        return [self._caches[e.slot].run(e) for e in batch]


def supports_batching(model: Any) -> bool:
    """Whether ``model`` (a ``tilellm.Model``) has a batched forward pass (its decoder's ``forward_batch``)."""
    dec = getattr(model, "decoder", None)
    return dec is not None and callable(getattr(dec, "forward_batch", None)) and \
        callable(getattr(dec, "new_slot_cache", None))


class BatchedRunner:
    """Continuous batching: every step's entries in ONE forward pass over a KV cache per slot.

    The model's decoder holds ``n_slots`` caches in one allocation (``new_slot_cache``); a step's rows
    (decode tokens of every active sequence, plus prompt chunks) go through each linear layer as one GEMM,
    so the weights are read once per step instead of once per sequence. Each slot keeps its own tokens,
    so a prompt reuses the longest prefix its slot holds (cut there, ``keep``). Prompt chunks are
    ``n_batch`` tokens, ``generate``'s split, and a row's arithmetic does not depend on the rest of the
    batch, so a greedy request gives ``generate``'s tokens bit for bit whatever runs beside it.
    """

    def __init__(self, model: Any, n_slots: int) -> None:
        if not supports_batching(model):
            raise ValueError("this model has no batched forward pass; use the serial or per-slot runner")
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        self.model = model
        self._dec = model.decoder
        self.n_ctx = int(model.n_ctx)
        self._cache = self._dec.new_slot_cache(n_slots, self.n_ctx)
        self._tokens: list[list[int]] = [[] for _ in range(n_slots)]
        self.max_seqs = self.max_slots = n_slots
        self.max_chunk = int(model.n_batch)
        # a whole prompt chunk fits beside every decoding sequence, so the first chunk is generate's
        self.max_tokens = self.max_chunk + n_slots

    def reusable(self, slot: int, tokens: Sequence[int]) -> int:
        have = self._tokens[slot]
        n = min(len(have), len(tokens) - 1)
        i = 0
        while i < n and have[i] == tokens[i]:
            i += 1
        return i

    def cached(self, slot: int) -> int:
        return len(self._tokens[slot])

    def forward(self, batch: Sequence[BatchEntry]) -> list[np.ndarray | None]:
        if len({e.slot for e in batch}) != len(batch):
            raise ValueError("one entry per slot and step")
        if not batch:
            return []
        ids: list[int] = []
        seq: list[int] = []
        pos: list[int] = []
        rows: list[int] = []
        for e in batch:
            if not 0 <= e.keep <= len(self._tokens[e.slot]):
                raise RuntimeError(f"slot {e.slot} asked to keep {e.keep} of {len(self._tokens[e.slot])} cached tokens")
            if not e.tokens:
                raise ValueError(f"entry for slot {e.slot} has no tokens")
            ids.extend(int(t) for t in e.tokens)
            seq.extend([e.slot] * len(e.tokens))
            pos.extend(range(e.keep, e.keep + len(e.tokens)))
            if e.logits:
                rows.append(len(ids) - 1)
        try:
            logits = self._dec.forward_batch(self._cache, ids, seq, pos, rows)
        except BaseException:
            for e in batch:  # the caches may hold part of the step: start these slots over
                self._tokens[e.slot] = []
                self._cache.clear(e.slot)
            raise
        out: list[np.ndarray | None] = []
        j = 0
        for e in batch:
            del self._tokens[e.slot][e.keep:]
            self._tokens[e.slot].extend(int(t) for t in e.tokens)
            if e.logits:
                # a row of the array forward_batch made for this call (no copy: nothing else holds or reuses it)
                out.append(np.asarray(logits[j], dtype=np.float32))
                j += 1
            else:
                out.append(None)
        return out


def default_runner(model: Any, n_slots: int) -> Any:
    """The batched runner when the model supports it, else the serial one."""
    return BatchedRunner(model, n_slots) if supports_batching(model) else SerialRunner(model)
