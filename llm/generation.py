"""Generation: the loop that samples tokens, streams text and watches for stop strings, and what it returns.

`Model.generate` checks the arguments and owns the KV cache; `generation_loop` runs the tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Protocol, Sequence, Union

import numpy as np

from .text.sampling import Sampler, log_softmax

# llama-cpp-python's hooks: processor(input_ids, logits) -> logits; criterion(input_ids, logits) -> stop?
LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]
StoppingCriterion = Callable[[np.ndarray, np.ndarray], bool]
LogitsProcessors = Union[LogitsProcessor, Sequence[LogitsProcessor]]
StoppingCriteria = Union[StoppingCriterion, Sequence[StoppingCriterion]]


@dataclass
class Timings:
    """Wall-clock timings of one generation (sampling is counted in ``gen_ms``)."""

    prompt_ms: float = 0.0
    gen_ms: float = 0.0
    prompt_tps: float = 0.0
    gen_tps: float = 0.0


@dataclass
class TokenLogprob:
    """The log-probability of a sampled token and of the most likely alternatives, from the model's
    logits (after ``logits_processor``, before logit bias, penalties and the sampling filters)."""

    token: int
    logprob: float
    top: dict[int, float]  # the `n` most likely ids -> logprob, highest first


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
    logprobs: list[TokenLogprob] | None = None  # one per token of `tokens`, when asked for
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused from the previous call

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
    logprobs: list[TokenLogprob] | None = None  # for `tokens`, when asked for
    cached_tokens: int = 0


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


class TextDecoder(Protocol):
    """Incremental detokenizer: ``feed`` never returns half a UTF-8 character."""

    def feed(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


class TextStream:
    """Text of one generated sequence, handed out piece by piece (``generate``'s and the server's).

    ``feed(token)`` returns the new text that is final (possibly ``""``: never half a UTF-8 character, never
    the beginning of a stop string that may still complete) and sets :attr:`stopped` when a stop string
    appeared; ``finish()`` returns the rest once generation has ended. The stop string and what follows it
    are left out.
    """

    def __init__(self, decoder: TextDecoder, stops: Sequence[str] = ()) -> None:
        self._decoder = decoder
        self._stops = [s for s in stops if s]
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._text = ""
        self._sent = 0                 # characters of _text already handed out
        self._cut: int | None = None   # where a stop string starts in _text
        self.stopped = False

    @property
    def text(self) -> str:
        """All final text so far (without any stop string)."""
        return self._text[: self._cut] if self._cut is not None else self._text

    def _append(self, piece: str) -> None:
        start = max(0, len(self._text) - self._max_stop + 1)
        self._text += piece
        if self._stops:
            self._cut = find_stop(self._text, self._stops, start)
            self.stopped = self._cut is not None

    def feed(self, token_id: int) -> str:
        """Add one sampled token; the text now safe to send."""
        if self.stopped:
            raise RuntimeError("feed() after a stop string ended the text")
        piece = self._decoder.feed(token_id)
        if not piece:
            return ""
        self._append(piece)
        if self.stopped:
            return ""  # finish() hands out what precedes the stop string
        safe = len(self._text) - (held_back(self._text, self._stops) if self._stops else 0)
        if safe <= self._sent:
            return ""
        out, self._sent = self._text[self._sent:safe], safe
        return out

    def finish(self) -> str:
        """End of generation: the text still held back (up to any stop string)."""
        if self._cut is None:
            tail = self._decoder.flush()
            if tail:
                self._append(tail)
        end = len(self._text) if self._cut is None else self._cut
        out = self._text[self._sent:max(end, self._sent)]
        self._sent = max(end, self._sent)
        return out


def as_processors(hooks: Any, what: str) -> list[Callable[[np.ndarray, np.ndarray], Any]]:
    """A callable or a list of callables (llama-cpp-python's LogitsProcessorList / StoppingCriteriaList) as a list."""
    if hooks is None:
        return []
    if callable(hooks) and not isinstance(hooks, (list, tuple)):
        return [hooks]
    if isinstance(hooks, (list, tuple)) and all(callable(h) for h in hooks):
        return list(hooks)
    raise ValueError(f"{what} must be a callable(input_ids, logits) or a list of them, got {hooks!r}")


def top_logprobs(logits: np.ndarray, token: int, n: int) -> TokenLogprob:
    """`token`'s log-probability under softmax(`logits`) and the `n` most likely ids'."""
    lp = log_softmax(logits)
    top: dict[int, float] = {}
    if n > 0:
        k = min(n, lp.shape[0])
        ids = np.argpartition(-lp, k - 1)[:k]
        ids = ids[np.argsort(-lp[ids], kind="stable")]
        top = {int(i): float(lp[i]) for i in ids}
    return TokenLogprob(int(token), float(lp[token]), top)


def generation_loop(prefill: Callable[[list[int]], tuple[np.ndarray, int]], step: Callable[[int], np.ndarray],
                    ids: list[int], budget: int, sampler: Sampler, stops: list[str], stream: Any,
                    eog: Collection[int], ignore_eos: bool, check_current: Callable[[], None], *,
                    logits_processor: LogitsProcessors | None = None,
                    stopping_criteria: StoppingCriteria | None = None,
                    logprobs: int | None = None) -> Iterator[GenerationChunk]:
    """Evaluate the prompt `ids` (`prefill(ids) -> (last logits, tokens reused from the cache)`), then sample up to
    `budget` tokens, evaluating each with `step(token) -> logits`.

    `stream` turns token ids into text (`feed(id) -> str`, `flush() -> str`); `eog` ends generation (never sampled
    with `ignore_eos`); `check_current()` raises when the caller's context was taken over. `logits_processor`s
    (llama-cpp-python's signature: `(input_ids int32 [n], logits float32 [n_vocab]) -> logits`) run first on each
    step's logits; a true `stopping_criteria(input_ids, logits)` ends generation ("stop") before the token just
    sampled. `logprobs` = n adds each token's log-probability and the n most likely alternatives. Chunks never hold
    half a character or a prefix of a stop string that may still complete; the last one has the finish reason
    and timings.
    """
    processors = as_processors(logits_processor, "logits_processor")
    criteria = as_processors(stopping_criteria, "stopping_criteria")
    check_current()
    t0 = time.perf_counter()
    logits, n_cached = prefill(ids)
    t1 = time.perf_counter()
    history = list(ids)
    text = TextStream(stream, stops)
    pending: list[int] = []  # tokens not yet handed out with a chunk
    pending_lp: list[TokenLogprob] = []
    n_gen = 0
    finish = "length"
    banned = np.array(sorted(eog), dtype=np.int64) if ignore_eos and eog else None
    while n_gen < budget:
        input_ids = np.asarray(history if processors or criteria else (), dtype=np.intc)
        for proc in processors:
            logits = np.asarray(proc(input_ids, np.array(logits, dtype=np.float32, copy=True)), dtype=np.float32)
        if banned is not None:
            logits = np.array(logits, dtype=np.float32, copy=True)
            logits[banned] = -np.inf
        tok = sampler.sample(logits, history)
        if tok in eog:
            finish = "stop"
            break
        if criteria and any(bool(c(input_ids, logits)) for c in criteria):
            finish = "stop"
            break
        n_gen += 1
        history.append(tok)
        pending.append(tok)
        if logprobs is not None:
            pending_lp.append(top_logprobs(logits, tok, logprobs))
        piece = text.feed(tok)
        if text.stopped:
            break
        if piece:
            yield GenerationChunk(piece, pending, None, len(ids), n_gen,
                                  logprobs=pending_lp if logprobs is not None else None, cached_tokens=n_cached)
            pending, pending_lp = [], []
        if n_gen >= budget:
            break
        check_current()
        logits = step(tok)
    tail = text.finish()
    if text.stopped:
        finish = "stop"
    t2 = time.perf_counter()
    prompt_s, gen_s = t1 - t0, t2 - t1
    timings = Timings(
        prompt_ms=prompt_s * 1e3,
        gen_ms=gen_s * 1e3,
        prompt_tps=(len(ids) - n_cached) / prompt_s if prompt_s > 0 else 0.0,
        gen_tps=n_gen / gen_s if gen_s > 0 and n_gen else 0.0,
    )
    yield GenerationChunk(tail, pending, finish, len(ids), n_gen, timings,
                          logprobs=pending_lp if logprobs is not None else None, cached_tokens=n_cached)
