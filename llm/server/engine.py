"""The scheduler: slots, a bounded waiting queue, and a step loop that owns the model.

The HTTP layer talks to :class:`Engine` only::

    handle = engine.submit(GenerationRequest(prompt_ids, max_tokens=64, sampling=SamplingParams(0.0)))
    async for ev in handle:            # TokenEvent(text, token_ids, finish_reason, usage)
        ...
    handle.cancel()                    # frees the slot within one step
    ids = await engine.call(lambda m: m.tokenize("hi"))   # any other use of the model

One thread (the scheduler) owns the ``Model``: it runs the forward passes, the samplers, the
detokenizers and every :meth:`Engine.call` job, so the model is never touched by two threads. It
works in *steps*. Each step it

1. drops cancelled requests (waiting or active: their slot is free for this very step),
2. admits waiting requests into free slots (``n_slots``; the slot whose cache shares the longest
   prefix with the prompt, else the least recently used one),
3. plans a batch: one entry per active sequence, decoding sequences first, then prompt chunks
   (at most ``max_chunk`` tokens each), within the runner's ``max_seqs`` and ``max_tokens``,
4. runs the runner's forward pass (the step function, ``runner.py``),
5. samples a token for every sequence whose last known token was evaluated, turns it into text,
   checks end-of-generation / stop strings / ``max_tokens``, sends events and frees finished slots.

With :class:`~tilellm.llm.server.runner.SerialRunner` (one KV cache) ``max_seqs`` is 1, so active
sequences run one after another; with :class:`~tilellm.llm.server.runner.ModelPerSlotRunner` (a model
per slot) they advance together, one forward each per step; a batched runner changes step 4 only.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence, TypeVar

import numpy as np

from tilellm.llm.generation import TextStream, top_logprobs

from ._compat import stream_decoder
from .runner import BatchEntry, ForwardRunner, default_runner
from .sampling import SamplingParams, SequenceSampler

__all__ = [
    "Engine", "EngineStats", "GenerationRequest", "TokenEvent", "TokenLogprobs", "Usage", "RequestHandle",
    "Completion", "QueueFullError", "EngineClosedError",
]

T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The waiting queue holds ``max_queue`` requests already (HTTP 503)."""


class EngineClosedError(RuntimeError):
    """The engine is shut down (or its scheduler died)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: prompt token ids, a token budget, sampling and stop strings.

    ``logprobs`` = n: each token's log-probability and the n most likely alternatives ride on its event.
    ``logits_processor``: ``f(input_ids int32 [n], logits float32 [n_vocab]) -> logits`` run on every step's
    logits before sampling (llama-cpp-python's signature; a structured-output ``Constraint``); it belongs to
    this sequence alone and runs on the scheduler thread.
    """

    prompt: Sequence[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    logprobs: int | None = None
    logits_processor: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class TokenLogprobs:
    """A sampled token's bytes and log-probability, and the most likely alternatives (most likely first), from
    the model's distribution after the ``logits_processor`` and before bias, penalties and filters."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Usage:
    """Token accounting of one sequence; ``cached_tokens`` of the prompt were reused from a slot's cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class TokenEvent:
    """A piece of a sequence's output. The last event of a sequence has ``finish_reason`` and ``usage``.

    ``finish_reason``: ``"stop"`` (end-of-generation token or stop string), ``"length"`` (``max_tokens``
    or the context), ``"cancelled"``, or ``"error"`` (then ``error`` says what went wrong).
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None
    logprobs: tuple[TokenLogprobs, ...] = ()  # for token_ids, when the request asked for them


@dataclass(frozen=True)
class Completion:
    """A whole sequence, as :meth:`RequestHandle.collect` returns it."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    usage: Usage
    error: str | None = None
    logprobs: tuple[TokenLogprobs, ...] = ()


class RequestHandle:
    """The HTTP side of one submitted sequence: an async iterator of :class:`TokenEvent` plus cancel."""

    def __init__(self, engine: "Engine", rid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.id = rid
        self._engine = engine
        self._loop = loop
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.finished = False  # the final event has been consumed

    def cancel(self) -> None:
        """Stop this sequence (no-op once finished). Its slot is free at the start of the next step."""
        if not self.finished:
            self._engine._cancel(self.id)

    def _push(self, ev: TokenEvent) -> None:  # scheduler thread: delivered with the step's other events
        self._engine._outbox.append((self, ev))

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        while not self.finished:
            ev = await self._events.get()
            if ev.finish_reason is not None:
                self.finished = True
            yield ev

    async def collect(self) -> Completion:
        """Wait for the whole sequence."""
        texts: list[str] = []
        ids: list[int] = []
        lps: list[TokenLogprobs] = []
        async for ev in self:
            texts.append(ev.text)
            ids.extend(ev.token_ids)
            lps.extend(ev.logprobs)
            if ev.finish_reason is not None:
                return Completion("".join(texts), tuple(ids), ev.finish_reason,
                                  ev.usage or Usage(0, 0), ev.error, tuple(lps))
        raise EngineClosedError("the sequence ended without a final event")


def _deliver(items: list[tuple[RequestHandle, TokenEvent]]) -> None:
    """On the event loop: one step's events into their handles' queues."""
    for h, ev in items:
        h._events.put_nowait(ev)


@dataclass
class EngineStats:
    """A snapshot for /metrics (counters since start; gauges now)."""

    n_slots: int
    busy_slots: int
    queue_length: int
    max_queue: int
    n_ctx: int
    kv_tokens: int
    requests_submitted: int
    requests_finished: dict[str, int]
    prompt_tokens: int        # prompt tokens evaluated (not counting reused ones)
    cached_tokens: int        # prompt tokens reused from a slot's cache
    generated_tokens: int
    prompt_seconds: float     # forward time spent on prompt tokens
    generation_seconds: float  # forward + sampling time spent on generated tokens
    steps: int
    # decode-only steps (no prompt token in the batch): how long their forward pass took, and the whole step
    # (forward + sampling, text, events), wall clock; with the step count they tell the time per step that the
    # engine spends against the time a client sees between tokens (the rest: HTTP side, GIL, the OS)
    decode_steps: int = 0
    decode_forward_seconds: float = 0.0
    decode_step_seconds: float = 0.0


class _Seq:
    """Scheduler-side state of one sequence."""

    def __init__(self, rid: int, req: GenerationRequest, handle: RequestHandle) -> None:
        self.rid = rid
        self.req = req
        self.handle = handle
        self.tokens = [int(t) for t in req.prompt]   # prompt + generated
        self.n_prompt = len(self.tokens)
        self.n_done: int | None = None   # tokens in the slot's KV cache; None until first scheduled
        self.n_cached = 0
        self.n_gen = 0
        self.slot = -1
        self.order = 0                   # admission order
        self.pending: list[int] = []     # sampled ids not yet sent with an event
        self.pending_lp: list[TokenLogprobs] = []  # their log-probabilities, when asked for
        self.sampler: SequenceSampler | None = None
        self.text: TextStream | None = None


@dataclass
class _Slot:
    id: int
    seq: _Seq | None = None
    last_used: int = 0


class Engine:
    """Continuous-batching scheduler over ``n_slots`` slots and one model.

    ``model``: a loaded ``tilellm.Model`` (used by the scheduler thread only, from :meth:`start` on);
    ``runner``: the step function (default :class:`BatchedRunner` when the model has a batched
    forward pass, else :class:`SerialRunner`); ``max_queue``:
    requests that may wait for a slot before :meth:`submit` raises :class:`QueueFullError`.
    """

    def __init__(self, model: Any, *, n_slots: int = 1, max_queue: int = 64,
                 runner: ForwardRunner | None = None) -> None:
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model
        self.runner: ForwardRunner = runner if runner is not None else default_runner(model, n_slots)
        max_slots = getattr(self.runner, "max_slots", None)  # runners with a cache per slot have a limit
        if max_slots is not None and n_slots > max_slots:
            raise ValueError(f"the runner holds {max_slots} slot caches, fewer than n_slots={n_slots}")
        self.n_slots = n_slots
        self.max_queue = max_queue
        self.n_ctx = int(self.runner.n_ctx)
        self.n_vocab = int(model.n_vocab)
        self._eog = frozenset(int(t) for t in model.eog_ids)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[_Seq] = collections.deque()   # guarded by _lock
        self._cancelled: set[int] = set()                              # guarded by _lock
        self._jobs: collections.deque[tuple[Callable[[Any], Any], concurrent.futures.Future[Any]]] = \
            collections.deque()                                        # guarded by _lock
        self._closing = False
        self._ids = itertools.count(1)
        # scheduler thread only:
        self._slots = [_Slot(i) for i in range(n_slots)]
        self._active: list[_Seq] = []
        self._order = itertools.count()
        self._step_no = 0
        # counters (written by the scheduler thread, read by anyone)
        self._submitted = 0
        self._finished: dict[str, int] = {"stop": 0, "length": 0, "cancelled": 0, "error": 0}
        self._n_prompt = self._n_cached = self._n_gen = 0
        self._t_prompt = self._t_gen = 0.0
        self._n_dsteps = 0
        self._t_dfwd = self._t_dstep = 0.0
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what killed the scheduler, if anything
        self._outbox: list[tuple[RequestHandle, TokenEvent]] = []  # scheduler thread: events not yet delivered

    # ------------------------------------------------------------------ lifetime
    def start(self) -> "Engine":
        """Start the scheduler thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tilellm-scheduler", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the scheduler: waiting and active sequences end with an ``"error"`` event."""
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    # ------------------------------------------------------------------ HTTP side (event-loop thread)
    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue one sequence; see :meth:`submit_many`."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[GenerationRequest]) -> list[RequestHandle]:
        """Queue sequences together (all or none); call from a running event loop.

        Raises ValueError for an empty prompt, ``max_tokens < 1`` or prompt + ``max_tokens`` past the
        context, :class:`QueueFullError` if they do not all fit in the queue, :class:`EngineClosedError`.
        """
        for r in requests:
            if not r.prompt:
                raise ValueError("the prompt has no tokens")
            if r.max_tokens < 1:
                raise ValueError(f"max_tokens must be >= 1, got {r.max_tokens}")
            if len(r.prompt) + r.max_tokens > self.n_ctx:
                raise ValueError(f"prompt ({len(r.prompt)} tokens) + max_tokens ({r.max_tokens}) "
                                 f"exceeds the context of {self.n_ctx}")
            bad = [t for t in r.prompt if not 0 <= int(t) < self.n_vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is out of range for a vocabulary of {self.n_vocab}")
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self.alive:
                raise EngineClosedError("the engine is not running")
            if len(self._waiting) + len(requests) > self.max_queue + self._free_slots_hint():
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests)")
            handles = []
            for r in requests:
                rid = next(self._ids)
                h = RequestHandle(self, rid, loop)
                self._waiting.append(_Seq(rid, r, h))
                handles.append(h)
            self._submitted += len(requests)
            self._wake.notify_all()
        return handles

    def _free_slots_hint(self) -> int:
        # requests that a free slot will take at the next step do not really wait
        return sum(1 for s in self._slots if s.seq is None)

    def _cancel(self, rid: int) -> None:
        with self._lock:
            self._cancelled.add(rid)
            self._wake.notify_all()

    async def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(model)`` on the scheduler thread between two steps and return its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if not self.alive:
                raise EngineClosedError("the engine is not running")
            self._jobs.append((fn, fut))
            self._wake.notify_all()
        return await asyncio.wrap_future(fut)

    def stats(self) -> EngineStats:
        """Counters and gauges for /metrics (safe from any thread; values may be one step old)."""
        with self._lock:
            queued = len(self._waiting)
        busy = sum(1 for s in self._slots if s.seq is not None)
        kv = sum(self.runner.cached(s.id) for s in self._slots)
        return EngineStats(self.n_slots, busy, queued, self.max_queue, self.n_ctx, kv, self._submitted,
                           dict(self._finished), self._n_prompt, self._n_cached, self._n_gen,
                           self._t_prompt, self._t_gen, self._step_no, self._n_dsteps, self._t_dfwd, self._t_dstep)

    # ------------------------------------------------------------------ scheduler thread
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not (self._closing or self._jobs or self._waiting or self._active or self._cancelled):
                        self._wake.wait()
                    if self._closing:
                        break
                    jobs = list(self._jobs)
                    self._jobs.clear()
                    cancelled, self._cancelled = self._cancelled, set()
                for fn, fut in jobs:
                    if fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn(self.model))
                        except BaseException as e:  # handed to the caller
                            fut.set_exception(e)
                self._step(cancelled)
                self._flush()
        except BaseException as e:  # a bug in the scheduler: fail everything loudly, never hang
            self.error = e
            raise
        finally:
            with self._lock:
                self._closing = True
                waiting, self._waiting = list(self._waiting), collections.deque()
                jobs = list(self._jobs)
                self._jobs.clear()
            reason = "the server is shutting down" if self.error is None else f"engine failure: {self.error!r}"
            for seq in waiting + self._active:
                self._end(seq, "error", "", error=reason)
            self._flush()
            for _, fut in jobs:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(EngineClosedError(reason))

    def _flush(self) -> None:
        """Hand the events of a step to their event loops: one wake-up per loop and step, not one per token."""
        if not self._outbox:
            return
        out, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, TokenEvent]]] = {}
        for h, ev in out:
            by_loop.setdefault(h._loop, []).append((h, ev))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                pass  # the event loop is gone (server shutting down): nobody is listening

    def _step(self, cancelled: set[int]) -> None:
        if cancelled:
            self._drop_cancelled(cancelled)
        self._admit()
        if not self._active:
            return
        self._step_no += 1
        plan = self._plan()
        if not plan:
            return
        t0 = time.perf_counter()
        try:
            out = self.runner.forward([e for _, e in plan])
        except Exception as e:  # a failing forward ends the sequences in it, not the server
            for seq, _ in plan:
                self._end(seq, "error", "", error=f"{type(e).__name__}: {e}")
            return
        t1 = time.perf_counter()
        n_prompt_in_step = sum(len(e.tokens) for s, e in plan if s.n_gen == 0)
        n_total_in_step = sum(len(e.tokens) for _, e in plan)
        for (seq, entry), logits in zip(plan, out):
            seq.n_done = entry.keep + len(entry.tokens)
            if logits is not None:
                self._advance(seq, logits)
        t2 = time.perf_counter()
        # forward time split by tokens between prompt and generation (a mixed step is rare)
        share = n_prompt_in_step / n_total_in_step if n_total_in_step else 0.0
        self._t_prompt += (t1 - t0) * share
        self._t_gen += (t1 - t0) * (1.0 - share) + (t2 - t1)
        self._n_prompt += n_prompt_in_step
        if n_prompt_in_step == 0:
            self._n_dsteps += 1
            self._t_dfwd += t1 - t0
            self._t_dstep += t2 - t0

    def _drop_cancelled(self, cancelled: set[int]) -> None:
        with self._lock:
            keep = collections.deque(s for s in self._waiting if s.rid not in cancelled)
            dropped = [s for s in self._waiting if s.rid in cancelled]
            self._waiting = keep
        for seq in dropped + [s for s in self._active if s.rid in cancelled]:
            self._end(seq, "cancelled", "")

    def _admit(self) -> None:
        free = [s for s in self._slots if s.seq is None]
        while free:
            with self._lock:
                if not self._waiting:
                    return
                seq = self._waiting.popleft()
            # the free slot whose cache shares the longest prefix with the prompt, else the LRU one
            slot = max(free, key=lambda s: (self.runner.reusable(s.id, seq.tokens), -s.last_used))
            free.remove(slot)
            try:
                seq.sampler = SequenceSampler(seq.req.sampling)
                seq.text = TextStream(stream_decoder(self.model), seq.req.stop)
            except Exception as e:
                self._end(seq, "error", "", error=f"{type(e).__name__}: {e}")
                continue
            slot.seq, seq.slot, seq.order = seq, slot.id, next(self._order)
            self._active.append(seq)

    def _plan(self) -> list[tuple[_Seq, BatchEntry]]:
        """This step's batch: decoding sequences first (oldest first), then prompt chunks."""
        r = self.runner
        budget = r.max_tokens
        plan: list[tuple[_Seq, BatchEntry]] = []
        started = sorted(self._active, key=lambda s: (s.n_gen == 0, s.order))
        for seq in started:
            if len(plan) >= r.max_seqs or budget <= 0:
                break
            if seq.n_done is None:  # first time scheduled: what its slot's cache already holds
                seq.n_done = seq.n_cached = r.reusable(seq.slot, seq.tokens)
                self._n_cached += seq.n_cached
            todo = len(seq.tokens) - seq.n_done
            n = min(todo, budget, r.max_chunk)
            chunk = seq.tokens[seq.n_done:seq.n_done + n]
            plan.append((seq, BatchEntry(seq.slot, seq.n_done, chunk, logits=(n == todo))))
            self._slots[seq.slot].last_used = self._step_no
            budget -= n
        return plan

    def _advance(self, seq: _Seq, logits: Any) -> None:
        """Sample seq's next token from ``logits`` and send what it adds."""
        assert seq.sampler is not None and seq.text is not None
        proc = seq.req.logits_processor
        try:
            if proc is not None:
                logits = np.asarray(proc(np.asarray(seq.tokens, dtype=np.intc), np.array(logits, dtype=np.float32)),
                                    dtype=np.float32)
            tok = seq.sampler.sample(logits, seq.tokens)
        except Exception as e:  # a failing constraint ends its sequence, not the server
            self._end(seq, "error", "", error=f"{type(e).__name__}: {e}")
            return
        if tok in self._eog:
            self._end(seq, "stop", "")
            return
        seq.tokens.append(tok)
        seq.n_gen += 1
        self._n_gen += 1
        seq.pending.append(tok)
        if seq.req.logprobs is not None:
            seq.pending_lp.append(self._logprobs(logits, tok, seq.req.logprobs))
        piece = seq.text.feed(tok)
        if seq.text.stopped:
            self._end(seq, "stop", piece)
        elif seq.n_gen >= seq.req.max_tokens or len(seq.tokens) >= self.n_ctx:
            self._end(seq, "length", piece)
        elif piece:
            seq.handle._push(TokenEvent(piece, tuple(seq.pending), logprobs=tuple(seq.pending_lp)))
            seq.pending, seq.pending_lp = [], []

    def _logprobs(self, logits: Any, tok: int, n: int) -> TokenLogprobs:
        lp = top_logprobs(np.asarray(logits, dtype=np.float32).reshape(-1), tok, n)
        piece = self.model.tokenizer.token_to_piece
        return TokenLogprobs(bytes(piece(tok, special=False)), lp.logprob,
                             tuple((bytes(piece(i, special=False)), v) for i, v in lp.top.items()))

    def _end(self, seq: _Seq, reason: str, text: str, error: str | None = None) -> None:
        """Send seq's final event and free its slot."""
        if seq.text is not None and reason in ("stop", "length"):
            text += seq.text.finish()
        usage = Usage(seq.n_prompt, seq.n_gen, seq.n_cached)
        seq.handle._push(TokenEvent(text, tuple(seq.pending), reason, usage, error, tuple(seq.pending_lp)))
        seq.pending, seq.pending_lp = [], []
        self._finished[reason] = self._finished.get(reason, 0) + 1
        if seq in self._active:
            self._active.remove(seq)
        if 0 <= seq.slot < len(self._slots) and self._slots[seq.slot].seq is seq:
            self._slots[seq.slot].seq = None
