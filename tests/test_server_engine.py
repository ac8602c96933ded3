"""The server's scheduler on its own (no HTTP): slots, queue, cancellation, prefix reuse, threads."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import MICRO_Q8, fixture_path

import tilellm
import tilellm.backend
from tilellm.llm.server import (
    BatchedRunner,
    Engine,
    EngineClosedError,
    GenerationRequest,
    ModelPerSlotRunner,
    QueueFullError,
    SamplingParams,
    SerialRunner,
)

MODEL = str(MICRO_Q8)
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def ref(micro_q8_ref: Any) -> Any:
    return micro_q8_ref


def _engine(**kw: Any) -> Engine:
    return Engine(tilellm.load(MODEL, n_threads=1), **kw).start()


def test_greedy_equals_generate_and_slots_serve_all(ref: Any) -> None:
    prompts = ["Once upon a time", "The cat sat on", "In a galaxy far", "Hello world"]
    eng = _engine(n_slots=2)
    try:
        async def main() -> list[Any]:
            hs = [eng.submit(GenerationRequest(ref.tokenize(p, add_bos=None, special=True), 12, GREEDY))
                  for p in prompts]
            return await asyncio.gather(*(h.collect() for h in hs))

        results = asyncio.run(main())
        for p, r in zip(prompts, results):
            want = ref.generate(p, max_tokens=12, temperature=0)
            assert (r.text, list(r.token_ids), r.finish_reason) == (want.text, want.tokens, want.finish_reason)
            assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
        st = eng.stats()
        assert st.busy_slots == 0 and st.queue_length == 0 and st.requests_finished["length"] == 4
        assert st.generated_tokens == 48
        # 4 x 12 tokens on 2 slots: each sequence's first token comes with its prompt, the other 44 decode tokens
        # run 1 or 2 per step, at most 4 of them beside a prompt (not decode-only steps); the forward is part of
        # the step's time
        assert 20 <= st.decode_steps <= 44
        assert 0 < st.decode_forward_seconds <= st.decode_step_seconds <= st.generation_seconds
    finally:
        eng.close()


def test_stop_strings_and_seeded_sampling_equal_generate(ref: Any) -> None:
    eng = _engine()
    try:
        prompt = ref.tokenize("Once upon a time", add_bos=None, special=True)
        full = ref.generate("Once upon a time", max_tokens=20, temperature=0).text
        stop = full[10:13]
        sp = SamplingParams(temperature=0.9, top_p=0.9, top_k=40, min_p=0.05, seed=1234)

        async def main() -> tuple[Any, Any]:
            a = eng.submit(GenerationRequest(prompt, 20, GREEDY, (stop,)))
            b = eng.submit(GenerationRequest(prompt, 20, sp))
            return await a.collect(), await b.collect()

        stopped, sampled = asyncio.run(main())
        want = ref.generate("Once upon a time", max_tokens=20, temperature=0, stop=[stop])
        assert (stopped.text, stopped.finish_reason) == (want.text, "stop")
        want = ref.generate("Once upon a time", max_tokens=20, temperature=0.9, top_p=0.9, top_k=40, min_p=0.05,
                            seed=1234)
        assert (sampled.text, list(sampled.token_ids)) == (want.text, want.tokens)
    finally:
        eng.close()


def test_cancel_frees_the_slot_within_one_step(ref: Any) -> None:
    eng = _engine(n_slots=1)
    try:
        prompt = ref.tokenize("A long story", add_bos=None, special=True)

        async def main() -> tuple[int, int, Any]:
            h = eng.submit(GenerationRequest(prompt, 1500, GREEDY))
            async for ev in h:
                if ev.token_ids:
                    break
            steps_at_cancel = eng.stats().steps
            h.cancel()
            end = await h.collect()
            deadline = time.monotonic() + 5
            while eng.stats().busy_slots and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            return steps_at_cancel, eng.stats().steps, end

        before, after, end = asyncio.run(main())
        assert end.finish_reason == "cancelled" and end.usage.completion_tokens < 1500
        assert eng.stats().busy_slots == 0
        assert after - before <= 1, "the cancelled sequence ran for more than one step after cancel()"
        assert eng.stats().requests_finished["cancelled"] == 1
    finally:
        eng.close()


def test_queue_bound_and_validation(ref: Any) -> None:
    eng = _engine(n_slots=1, max_queue=1)
    try:
        prompt = ref.tokenize("Queue", add_bos=None, special=True)

        async def main() -> None:
            long = eng.submit(GenerationRequest(prompt, 1000, GREEDY))    # takes the slot
            waiting = eng.submit(GenerationRequest(prompt, 2, GREEDY))    # the one queue place
            with pytest.raises(QueueFullError):
                eng.submit(GenerationRequest(prompt, 2, GREEDY))
            long.cancel()
            assert (await waiting.collect()).finish_reason == "length"
            assert (await long.collect()).finish_reason == "cancelled"
            # all or nothing: two do not fit in one place (the free slot takes one: 1 + 1 = 2 fit)
            with pytest.raises(QueueFullError):
                eng.submit_many([GenerationRequest(prompt, 2, GREEDY)] * 3)
            assert eng.stats().queue_length == 0
            with pytest.raises(ValueError, match="exceeds the context"):
                eng.submit(GenerationRequest(prompt, eng.n_ctx, GREEDY))
            with pytest.raises(ValueError, match="max_tokens"):
                eng.submit(GenerationRequest(prompt, 0, GREEDY))
            with pytest.raises(ValueError, match="out of range"):
                eng.submit(GenerationRequest([10**6], 2, GREEDY))

        asyncio.run(main())
    finally:
        eng.close()


def test_prefix_reuse_counts_cached_tokens(ref: Any) -> None:
    eng = _engine(n_slots=2)
    try:
        p1 = ref.tokenize("Once upon a time", add_bos=None, special=True)

        async def main() -> tuple[Any, Any]:
            first = await eng.submit(GenerationRequest(p1, 6, GREEDY)).collect()
            # the cache holds the prompt and all generated tokens but the last (never evaluated)
            p2 = p1 + list(first.token_ids) + ref.tokenize(" again", add_bos=False)
            second = await eng.submit(GenerationRequest(p2, 6, GREEDY)).collect()
            return first, second

        first, second = asyncio.run(main())
        assert first.usage.cached_tokens == 0
        assert second.usage.cached_tokens == len(p1) + 6 - 1
        assert second.usage.completion_tokens == 6
        assert eng.stats().cached_tokens == second.usage.cached_tokens
    finally:
        eng.close()


class _ThreadRecorder:
    """The real model, recording which threads touch it."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.threads: set[str] = set()
        self.recording = False

    def __getattr__(self, name: str) -> Any:
        if self.recording:
            self.threads.add(threading.current_thread().name)
        return getattr(self._model, name)


def test_model_is_used_by_the_scheduler_thread_only(ref: Any) -> None:
    rec = _ThreadRecorder(tilellm.load(MODEL, n_threads=1))
    eng = Engine(rec, n_slots=2)
    rec.recording = True
    eng.start()
    try:
        async def main() -> None:
            ids = await eng.call(lambda m: m.tokenize("Hi there", add_bos=None, special=True))
            hs = eng.submit_many([GenerationRequest(ids, 5, GREEDY)] * 3)
            await asyncio.gather(*(h.collect() for h in hs))
            assert await eng.call(lambda m: m.detokenize(ids[1:])) == "Hi there"
            eng.stats()

        asyncio.run(main())
        assert rec.threads == {"tilellm-scheduler"}
    finally:
        eng.close()


def test_close_ends_waiting_and_active_sequences(ref: Any) -> None:
    eng = _engine(n_slots=1)
    prompt = ref.tokenize("Bye", add_bos=None, special=True)

    async def main() -> list[Any]:
        hs = eng.submit_many([GenerationRequest(prompt, 1500, GREEDY)] * 2)
        async for _ in hs[0]:
            break
        await asyncio.get_running_loop().run_in_executor(None, eng.close)
        out = [await h.collect() for h in hs]
        with pytest.raises(EngineClosedError):
            eng.submit(GenerationRequest(prompt, 2, GREEDY))
        return out

    for r in asyncio.run(main()):
        assert r.finish_reason == "error" and "shutting down" in (r.error or "")


# ----------------------------------------------------------------------------- a model per slot

def _per_slot_engine(n_slots: int) -> Engine:
    models = [tilellm.load(MODEL, n_threads=1) for _ in range(n_slots)]
    return Engine(models[0], n_slots=n_slots, runner=ModelPerSlotRunner(models)).start()


def test_per_slot_runner_interleaves_and_equals_generate(ref: Any) -> None:
    eng = _per_slot_engine(3)
    long_prompt = ref.tokenize("Once upon a time " * 150, add_bos=None, special=True)  # > n_batch: 2 chunks
    assert len(long_prompt) > ref.n_batch
    jobs = [(ref.tokenize("A long story", add_bos=None, special=True), 300),
            (long_prompt, 20),
            (ref.tokenize("Short", add_bos=None, special=True), 3)]
    try:
        async def main() -> tuple[list[Any], list[int]]:
            hs = [eng.submit(GenerationRequest(p, n, GREEDY)) for p, n in jobs]
            done: list[int] = []

            async def run(i: int) -> Any:
                r = await hs[i].collect()
                done.append(i)
                return r

            return list(await asyncio.gather(*(run(i) for i in range(3)))), done

        results, order = asyncio.run(main())
        for (p, n), r in zip(jobs, results):
            want = ref.generate(p, max_tokens=n, temperature=0)
            assert (list(r.token_ids), r.text) == (want.tokens, want.text)
        # the sequences advanced together: the short and the chunked one end before the long one
        assert order[-1] == 0
        st = eng.stats()
        assert st.busy_slots == 0 and st.generated_tokens == 323
    finally:
        eng.close()


def test_per_slot_runner_needs_a_model_per_slot() -> None:
    with tilellm.load(MODEL, n_threads=1) as m:
        with pytest.raises(ValueError, match="slot caches"):
            Engine(m, n_slots=2, runner=ModelPerSlotRunner([m]))


def test_per_slot_runner_keeps_each_conversation_in_its_slot(ref: Any) -> None:
    eng = _per_slot_engine(2)
    try:
        a = ref.tokenize("Alice says", add_bos=None, special=True)
        b = ref.tokenize("Bob writes", add_bos=None, special=True)

        async def main() -> list[int]:
            ra, rb = await asyncio.gather(eng.submit(GenerationRequest(a, 5, GREEDY)).collect(),
                                          eng.submit(GenerationRequest(b, 5, GREEDY)).collect())
            a2 = a + list(ra.token_ids) + [13]
            b2 = b + list(rb.token_ids) + [13]
            # second turns, in the other order: each finds the slot holding its first turn
            rb2, ra2 = await asyncio.gather(eng.submit(GenerationRequest(b2, 3, GREEDY)).collect(),
                                            eng.submit(GenerationRequest(a2, 3, GREEDY)).collect())
            return [ra2.usage.cached_tokens, rb2.usage.cached_tokens]

        assert asyncio.run(main()) == [len(a) + 4, len(b) + 4]
    finally:
        eng.close()


# ----------------------------------------------------------------------------- batch invariance

KERNEL_BACKENDS = [b for b in tilellm.backend.available() if b != "reference"]


def _runner_engine(kind: str, backend: str, n_slots: int, path: str = MODEL) -> tuple[Engine, list[Any]]:
    """An engine with the named runner (serial, per-slot or batched)."""
    n_models = n_slots if kind == "per-slot" else 1
    models = [tilellm.load(path, n_threads=1, backend=backend) for _ in range(n_models)]
    runner: Any = None
    if kind == "per-slot":
        runner = ModelPerSlotRunner(models)
    elif kind == "batched":
        runner = BatchedRunner(models[0], n_slots)
    elif kind == "serial":
        runner = SerialRunner(models[0])
    return Engine(models[0], n_slots=n_slots, runner=runner).start(), models


Q4_0 = str(fixture_path("llama2-micro-q4_0.gguf"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("kind,n_slots,path", [
    ("serial", 16, MODEL), ("per-slot", 4, MODEL), ("per-slot", 16, MODEL), ("batched", 1, MODEL),
    ("batched", 2, MODEL), ("batched", 4, MODEL), ("batched", 16, MODEL),
    # q4_0: the type of the throughput target, whose 2..16-row steps take the kernels' small-n path
    ("batched", 8, Q4_0), ("batched", 16, Q4_0)])
def test_16_concurrent_greedy_requests_equal_each_alone(backend: str, kind: str, n_slots: int, path: str) -> None:
    prompts = ["Once upon a time", "The cat sat on", "In a galaxy far", "Hello world"]
    with tilellm.load(path, n_threads=1, backend=backend) as alone:
        want = {p: alone.generate(p, max_tokens=8, temperature=0).tokens for p in prompts}
        ids = {p: alone.tokenize(p, add_bos=None, special=True) for p in prompts}
    eng, models = _runner_engine(kind, backend, n_slots, path)
    try:
        async def main() -> list[Any]:
            hs = eng.submit_many([GenerationRequest(ids[prompts[i % 4]], 8, GREEDY) for i in range(16)])
            return list(await asyncio.gather(*(h.collect() for h in hs)))

        for i, r in enumerate(asyncio.run(main())):
            assert list(r.token_ids) == want[prompts[i % 4]], f"request {i} differs from the same request alone"
    finally:
        eng.close()
        for m in models:
            m.close()


@pytest.mark.parametrize("n_slots", [1, 4, 8])
def test_penalties_bias_logprobs_and_constraints_beside_others_equal_generate(ref: Any, n_slots: int) -> None:
    """The new per-sequence features (penalties, logit bias, log-probabilities, a JSON-schema constraint) keep each
    sequence equal to ``generate`` alone, whatever runs beside it in the batched runner."""
    import json

    from tilellm.llm.text.constrain import logits_processor

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["n"], "additionalProperties": False}
    prompts = ["Once upon a time", "The cat sat on", "In a galaxy far", "Hello world"]
    ids = {p: ref.tokenize(p, add_bos=None, special=True) for p in prompts}
    kinds = [dict(temperature=0.9, seed=21, presence_penalty=0.7, frequency_penalty=0.3),
             dict(temperature=0.0, logit_bias=((13, 3.0), (29, -100.0))),
             dict(temperature=1.0, seed=5)]

    def sampling(i: int) -> SamplingParams:
        k = dict(kinds[i % 3])
        return SamplingParams(**k)

    def want(i: int) -> Any:
        k = dict(kinds[i % 3])
        if "logit_bias" in k:
            k["logit_bias"] = dict(k["logit_bias"])
        constrained = i % 3 == 2
        ref.reset()  # evaluate the prompt afresh, as the engine's empty slots do
        proc = logits_processor(ref.tokenizer, json_schema=schema, n_vocab=ref.n_vocab) if constrained else None
        return ref.generate(ids[prompts[i % 4]], max_tokens=16, logprobs=2, logits_processor=proc, **k)

    wants = [want(i) for i in range(8)]
    eng = Engine(tilellm.load(MODEL, n_threads=1), n_slots=n_slots).start()
    try:
        async def main() -> list[Any]:
            reqs = [GenerationRequest(ids[prompts[i % 4]], 16, sampling(i), logprobs=2, logits_processor=(
                logits_processor(ref.tokenizer, json_schema=schema, n_vocab=ref.n_vocab) if i % 3 == 2 else None))
                for i in range(8)]
            hs = eng.submit_many(reqs)
            return list(await asyncio.gather(*(h.collect() for h in hs)))

        for i, (r, w) in enumerate(zip(asyncio.run(main()), wants)):
            assert (list(r.token_ids), r.text, r.finish_reason) == (w.tokens, w.text, w.finish_reason), i
            assert [x.logprob for x in r.logprobs] == [x.logprob for x in w.logprobs]
            assert [tuple(v for _, v in x.top) for x in r.logprobs] == [tuple(x.top.values()) for x in w.logprobs]
            if i % 3 == 2:
                assert json.loads(r.text)["n"] in range(100)
    finally:
        eng.close()
        eng.model.close()
