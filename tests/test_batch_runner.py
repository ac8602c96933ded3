"""The server's BatchedRunner (one forward pass per step over a KV cache per slot) on real models."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from conftest import MICRO_Q8

import tilellm
from tilellm.llm.server import BatchedRunner, BatchEntry, Engine, GenerationRequest, SamplingParams
from tilellm.llm.server.runner import default_runner

MODEL = str(MICRO_Q8)
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def ref(micro_q8_ref: Any) -> Any:
    return micro_q8_ref


def test_default_runner_is_batched_and_sized_for_a_chunk_beside_every_slot(ref: Any) -> None:
    r = default_runner(ref, 4)
    assert isinstance(r, BatchedRunner)
    assert (r.max_seqs, r.max_chunk, r.max_tokens, r.n_ctx) == (4, ref.n_batch, ref.n_batch + 4, ref.n_ctx)
    eng = Engine(ref, n_slots=4)
    assert isinstance(eng.runner, BatchedRunner)


def test_prefix_reuse_cuts_a_slot_where_the_prompt_diverges(ref: Any) -> None:
    with tilellm.load(MODEL, n_threads=1) as m:
        r = BatchedRunner(m, 2)
        a = ref.tokenize("Once upon a time there was", add_bos=None, special=True)
        b = a[:4] + ref.tokenize(" a dragon", add_bos=False)
        assert r.reusable(0, a) == 0 and r.cached(0) == 0
        r.forward([BatchEntry(0, 0, a, logits=True)])
        assert r.cached(0) == len(a) and r.cached(1) == 0
        assert r.reusable(0, a + [5]) == len(a)
        assert r.reusable(0, a) == len(a) - 1  # always leaves a token to evaluate
        n = r.reusable(0, b)
        assert n == 4 and r.reusable(1, b) == 0
        got = r.forward([BatchEntry(0, n, b[n:], logits=True), BatchEntry(1, 0, a[:3], logits=False)])
        assert got[1] is None and r.cached(1) == 3 and r.cached(0) == len(b)
        ref.reset()
        assert np.array_equal(got[0], ref.eval(b))


def test_bad_entries_are_errors_and_a_failed_step_clears_its_slots(ref: Any) -> None:
    with tilellm.load(MODEL, n_threads=1) as m:
        r = BatchedRunner(m, 2)
        r.forward([BatchEntry(0, 0, [1, 2, 3], logits=False)])
        with pytest.raises(ValueError, match="one entry per slot"):
            r.forward([BatchEntry(1, 0, [1], True), BatchEntry(1, 0, [2], True)])
        with pytest.raises(RuntimeError, match="keep 5"):
            r.forward([BatchEntry(0, 5, [1], True)])
        with pytest.raises(ValueError, match="out of range"):
            r.forward([BatchEntry(0, 3, [10 ** 7], True)])
        assert r.cached(0) == 0  # started over
        with pytest.raises(ValueError, match="n_slots"):
            BatchedRunner(m, 0)


def test_engine_interleaves_a_chunked_prompt_with_decoding_and_equals_generate(ref: Any) -> None:
    """A prompt of two n_batch chunks and short prompts beside sequences that decode, in one pass per step."""
    long_prompt = ref.tokenize("Once upon a time " * 150, add_bos=None, special=True)
    assert len(long_prompt) > ref.n_batch
    jobs = [(ref.tokenize("A long story", add_bos=None, special=True), 120), (long_prompt, 20),
            (ref.tokenize("Short", add_bos=None, special=True), 3), (ref.tokenize("Hello", add_bos=None), 40)]
    with tilellm.load(MODEL, n_threads=1) as m:
        eng = Engine(m, n_slots=3, runner=BatchedRunner(m, 3)).start()
        try:
            async def main() -> list[Any]:
                hs = eng.submit_many([GenerationRequest(p, n, GREEDY) for p, n in jobs])
                return list(await asyncio.gather(*(h.collect() for h in hs)))

            results = asyncio.run(main())
            st = eng.stats()
        finally:
            eng.close()
    for (p, n), r in zip(jobs, results):
        want = ref.generate(p, max_tokens=n, temperature=0)
        assert (list(r.token_ids), r.text) == (want.tokens, want.text)
    # every step ran all active sequences at once: far fewer steps than tokens
    assert st.generated_tokens == sum(len(r.token_ids) for r in results)
    assert st.steps < st.generated_tokens
