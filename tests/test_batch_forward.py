"""The models' batched forward (several sequences, one pass): each row equals the same sequence run alone."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest

import tilellm
import tilellm.backend
from tilellm.quant.errors import ContextOverflowError

DATA = os.path.join(os.path.dirname(__file__), "data")
KERNEL_BACKENDS = [b for b in tilellm.backend.available() if b != "reference"]
PROMPTS = [[1, 450, 3635, 3290, 373], [1, 1724, 263], [1, 1543, 3186, 2991, 338, 278, 1900], [1, 29]]


def _load(name: str, backend: str) -> Any:
    return tilellm.load(os.path.join(DATA, name), n_threads=1, backend=backend)


def _alone(dec: Any, prompt: list[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
    """Greedy decode of one sequence through the single-sequence API: logits of every step and the tokens."""
    dec.reset()
    logits = [dec.eval(prompt).copy()]
    toks = list(prompt)
    for _ in range(steps):
        t = int(np.argmax(logits[-1]))
        toks.append(t)
        logits.append(dec.eval([t]).copy())
    return logits, toks


def _batched(dec: Any, prompts: list[list[int]], steps: int) -> list[list[np.ndarray]]:
    """All prompts together: one forward for the prompts, then one per step over every sequence's token."""
    cache = dec.new_slot_cache(len(prompts))
    ids = [t for p in prompts for t in p]
    seq = [i for i, p in enumerate(prompts) for _ in p]
    pos = [j for p in prompts for j in range(len(p))]
    ends = list(np.cumsum([len(p) for p in prompts]) - 1)
    out = [[row.copy()] for row in dec.forward_batch(cache, ids, seq, pos, ends)]
    n = [len(p) for p in prompts]
    for _ in range(steps):
        nxt = [int(np.argmax(o[-1])) for o in out]
        lg = dec.forward_batch(cache, nxt, list(range(len(prompts))), n, list(range(len(prompts))))
        for i, row in enumerate(lg):
            out[i].append(row.copy())
        n = [x + 1 for x in n]
    return out


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + ["reference"])
@pytest.mark.parametrize("name", ["llama2-micro-q8_0.gguf", "llama2-micro-q4_0.gguf", "llama2-micro-f32.gguf",
                                  "llama2-micro-bf16.gguf", "qwen2-micro-q8_0.gguf", "llama3-micro-q4_0.gguf",
                                  "deepseek2-micro-q8_0.gguf", "deepseek2-lite-micro-q8_0.gguf"])
@pytest.mark.parametrize("concurrency", [1, 2, 4, 16])
def test_batched_rows_equal_each_sequence_alone(backend: str, name: str, concurrency: int) -> None:
    if backend == "reference" and concurrency not in (1, 4):
        pytest.skip("the reference backend: two levels are enough")
    with _load(name, backend) as m:
        _check_invariance(m.decoder, concurrency, 5)


def _check_invariance(dec: Any, concurrency: int, steps: int) -> None:
    base = [[t % dec.n_vocab for t in p] for p in PROMPTS]
    prompts = [base[i % len(base)] for i in range(concurrency)]
    want = {i: _alone(dec, base[i], steps)[0] for i in range(min(concurrency, len(base)))}
    got = _batched(dec, prompts, steps)
    for i, rows in enumerate(got):
        assert len(rows) == steps + 1
        for step, (a, b) in enumerate(zip(rows, want[i % len(base)])):
            assert np.array_equal(a, b), f"sequence {i} step {step} differs from the sequence alone"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_gemma3_batched_rows_with_a_small_sliding_window(concurrency: int) -> None:
    """Gemma 3 270M (the demo extra) with its window shrunk to 4 positions, so the local layers' window
    cuts every sequence's keys: each row still equals its sequence alone."""
    from tilellm.llm.cli.default_model import default_model_path, is_available
    if not is_available():
        pytest.skip("Gemma 3 270M is the 'demo' extra")
    with tilellm.load(default_model_path(progress=None), n_ctx=32, n_threads=1) as m:
        dec = m.decoder
        dec.gparams = dataclasses.replace(dec.gparams, sliding_window=4)
        _check_invariance(dec, concurrency, 3)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_long_prompt_chunk_beside_decode_rows(backend: str) -> None:
    """A prompt chunk of more rows than the small-GEMM bound beside decode rows: both equal their runs alone."""
    with _load("llama2-micro-f32.gguf", backend) as m:
        dec = m.decoder
        long = [1] + [(7 * i) % 500 + 3 for i in range(130)]
        want_long = _alone(dec, long, 0)[0][0]
        want_short, toks = _alone(dec, PROMPTS[0], 1)
        cache = dec.new_slot_cache(2)
        dec.forward_batch(cache, PROMPTS[0], [0] * 5, range(5), [])
        got = dec.forward_batch(cache, [toks[5]] + long, [0] + [1] * len(long), [5] + list(range(len(long))),
                                [0, len(long)])
        assert np.array_equal(got[0], want_short[1])
        assert np.array_equal(got[1], want_long)


def test_keep_cuts_a_slot_and_continues_like_a_fresh_sequence() -> None:
    with _load("llama2-micro-q8_0.gguf", "auto") as m:
        dec = m.decoder
        cache = dec.new_slot_cache(3)
        p = PROMPTS[2]
        dec.forward_batch(cache, p, [1] * len(p), range(len(p)), [])
        assert int(cache.lengths[1]) == len(p) and int(cache.lengths[0]) == 0
        # diverge after 3 tokens: positions >= 3 are replaced
        got = dec.forward_batch(cache, [500, 501], [1, 1], [3, 4], [1])[0]
        dec.reset()
        want = dec.eval(p[:3] + [500, 501])
        assert np.array_equal(got, want)
        assert int(cache.lengths[1]) == 5
        cache.copy_prefix(1, 2, 5)
        got2 = dec.forward_batch(cache, [77], [2], [5], [0])[0]
        assert np.array_equal(got2, dec.eval([77]))


def test_bad_batches_are_clear_errors() -> None:
    with _load("llama2-micro-q8_0.gguf", "auto") as m:
        dec = m.decoder
        cache = dec.new_slot_cache(2, n_ctx=8)
        with pytest.raises(ValueError, match="adjacent"):
            dec.forward_batch(cache, [1, 2, 3], [0, 1, 0], [0, 0, 1], [2])
        with pytest.raises(ValueError, match="consecutive"):
            dec.forward_batch(cache, [1, 2], [0, 0], [0, 2], [1])
        with pytest.raises(ValueError, match="cannot append"):
            dec.forward_batch(cache, [1], [0], [3], [0])
        with pytest.raises(ValueError, match="not a slot"):
            dec.forward_batch(cache, [1], [2], [0], [0])
        with pytest.raises(ValueError, match="out of range"):
            dec.forward_batch(cache, [10 ** 6], [0], [0], [0])
        with pytest.raises(ValueError, match="logits_rows"):
            dec.forward_batch(cache, [1], [0], [0], [1])
        with pytest.raises(ContextOverflowError):
            dec.forward_batch(cache, list(range(1, 10)), [0] * 9, range(9), [8])
        with pytest.raises(ValueError, match="n_slots"):
            dec.new_slot_cache(0)
