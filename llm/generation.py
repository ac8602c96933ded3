"""Generation: the loop that samples tokens, streams text and watches for stop strings, and what it returns.

`Model.generate` checks the arguments and owns the KV cache; `generation_loop` runs the tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Sequence

import numpy as np

from .models.base import Decoder
from .text.sampling import Sampler


@dataclass
class Timings:
    """Wall-clock timings of one generation (sampling is counted in ``gen_ms``)."""

    prompt_ms: float = 0.0
    gen_ms: float = 0.0
    prompt_tps: float = 0.0
    gen_tps: float = 0.0


@dataclass
class GenerationResult:
    """A finished generation.

    ``text`` excludes the prompt, any end-of-generation token and any stop string (and what
    followed it). ``tokens`` are the sampled ids, excluding the end-of-generation token; when a
    stop string ended generation they include the token(s) that spelled it.
    """

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOG token or stop string) | "length" (max_tokens or context full)
    prompt_tokens: int
    completion_tokens: int
    timings: Timings = field(default_factory=Timings)

    def __str__(self) -> str:
        return self.text


@dataclass
class GenerationChunk:
    """One piece of a streamed generation.

    ``text`` is never half a UTF-8 character and never a prefix of a stop string that may still
    complete. ``tokens`` are the ids sampled since the previous chunk. Only the last chunk has
    ``finish_reason`` and ``timings`` set (its ``text`` may be empty).
    """

    text: str
    tokens: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: Timings | None = None


def find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Index of the earliest stop string in ``text[start:]``, or None."""
    best = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    return n


def check_stops(stop: str | Sequence[str] | None) -> list[str]:
    """`stop` as a list of non-empty strings (ValueError for anything else)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    out = []
    for s in stop:
        if not isinstance(s, str):
            raise ValueError(f"stop must be a string or a list of strings, got {s!r}")
        if s:  # an empty stop string would match everywhere: ignore it
            out.append(s)
    return out


def generation_loop(fwd: Decoder, ids: list[int], budget: int, sampler: Sampler, stops: list[str], stream: Any,
                    eog: Collection[int], ignore_eos: bool, check_current: Callable[[], None]
                    ) -> Iterator[GenerationChunk]:
    """Evaluate the prompt `ids` from an empty context, then sample up to `budget` tokens.

    `stream` turns token ids into text (`feed(id) -> str`, `flush() -> str`); `eog` ends generation (never sampled
    with `ignore_eos`); `check_current()` raises when the caller's context was taken over. Chunks never hold half a
    character or a prefix of a stop string that may still complete; the last one has the finish reason and timings.
    """
    check_current()
    t0 = time.perf_counter()
    fwd.reset()
    logits = fwd.eval(ids)
    t1 = time.perf_counter()
    history = list(ids)
    max_stop = max((len(s) for s in stops), default=0)
    text = ""
    emitted = 0  # characters of `text` already handed out
    pending: list[int] = []  # tokens not yet handed out with a chunk
    n_gen = 0
    finish = "length"
    cut: int | None = None  # where a stop string starts in `text`
    banned = np.array(sorted(eog), dtype=np.int64) if ignore_eos and eog else None
    while n_gen < budget:
        if banned is not None:
            logits = np.array(logits, dtype=np.float32, copy=True)
            logits[banned] = -np.inf
        tok = sampler.sample(logits, history)
        if tok in eog:
            finish = "stop"
            break
        n_gen += 1
        history.append(tok)
        pending.append(tok)
        piece = stream.feed(tok)
        if piece:
            start = max(0, len(text) - max_stop + 1)
            text += piece
            if stops:
                cut = find_stop(text, stops, start)
                if cut is not None:
                    finish = "stop"
                    break
            safe = len(text) - (held_back(text, stops) if stops else 0)
            if safe > emitted:
                yield GenerationChunk(text[emitted:safe], pending, None, len(ids), n_gen)
                emitted, pending = safe, []
        if n_gen >= budget:
            break
        check_current()
        logits = fwd.eval([tok])
    if cut is None:
        tail = stream.flush()
        if tail:
            start = max(0, len(text) - max_stop + 1)
            text += tail
            if stops:
                cut = find_stop(text, stops, start)
                if cut is not None:
                    finish = "stop"
    end = len(text) if cut is None else cut
    t2 = time.perf_counter()
    prompt_s, gen_s = t1 - t0, t2 - t1
    timings = Timings(
        prompt_ms=prompt_s * 1e3,
        gen_ms=gen_s * 1e3,
        prompt_tps=len(ids) / prompt_s if prompt_s > 0 else 0.0,
        gen_tps=n_gen / gen_s if gen_s > 0 and n_gen else 0.0,
    )
    yield GenerationChunk(text[emitted:max(end, emitted)], pending, finish, len(ids), n_gen, timings)
