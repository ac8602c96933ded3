"""Hostile calls (issue #14, findings 1, 3 and 7): a shared Model serialises its calls, a chat render is bounded
by what the context can hold, bad prompt text and a vanishing temperature are handled, and the command line
survives /dev/zero, a closed stdout and repeated Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path

import tilellm
from tilellm.llm.text.chat import ChatTemplateLimitError

ROOT = Path(__file__).resolve().parent.parent
LLAMA = "llama2-micro-q8_0.gguf"


@pytest.fixture
def fast_switching():
    """Switch threads every microsecond, so unguarded interleavings show up in a short test."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.fixture(scope="module")
def model():
    with tilellm.load(fixture_path(LLAMA), n_ctx=64, n_threads=1, seed=0) as m:
        yield m


# ---------------------------------------------------------------- finding 3: threads
def test_shared_model_gives_each_thread_the_single_threaded_answer(model, fast_switching) -> None:
    prompts = [[1, 10 + i, 20 + 2 * i] for i in range(8)]
    want = [model.generate(p, max_tokens=6, temperature=0, ignore_eos=True).tokens for p in prompts]
    got: dict[tuple[int, int], tuple[int, list[int]]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for rep in range(3):
                for i, p in enumerate(prompts):
                    out = model.generate(p, max_tokens=6, temperature=0, ignore_eos=True)
                    got[(t, rep * 100 + i)] = (i, out.tokens)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert len(got) == 4 * 3 * len(prompts)
    wrong = [(k, v) for k, v in got.items() if v[1] != want[v[0]]]
    assert not wrong, f"{len(wrong)} of {len(got)} results differ from the single-threaded answer"


def test_eval_from_threads_never_interleaves(model, fast_switching) -> None:
    """eval() appends to the one KV cache: under the lock, reset+eval pairs from many threads stay whole."""
    model.reset()
    want = model.eval([1, 5, 9]).copy()
    bad: list[str] = []

    def worker() -> None:
        try:
            for _ in range(10):
                with model.lock:  # the documented way to make a multi-call sequence atomic
                    model.reset()
                    out = model.eval([1, 5, 9])
                if not np.allclose(out, want, atol=1e-5):
                    bad.append("differs")
        except BaseException as e:  # noqa: BLE001 - reported below
            bad.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not bad


def test_a_second_thread_waits_for_the_call_in_progress(model, monkeypatch) -> None:
    """Deterministic: thread A is held inside the forward pass; thread B's generate must wait for A's call to end
    (before the lock, B ran straight through A's context and A failed or returned B's tokens)."""
    want_a = model.generate([1, 7, 8], max_tokens=4, temperature=0, ignore_eos=True).tokens
    want_b = model.generate([1, 9], max_tokens=4, temperature=0, ignore_eos=True).tokens
    inside, release = threading.Event(), threading.Event()
    real_eval = model.decoder.eval
    results: dict[str, object] = {}

    def held_eval(*a, **k):
        if threading.current_thread().name == "A" and not inside.is_set():
            inside.set()
            release.wait(10)
        return real_eval(*a, **k)

    monkeypatch.setattr(model.decoder, "eval", held_eval)

    def call(name: str, prompt: list[int]) -> None:
        try:
            results[name] = model.generate(prompt, max_tokens=4, temperature=0, ignore_eos=True).tokens
        except BaseException as e:  # noqa: BLE001 - compared below
            results[name] = e

    ta = threading.Thread(target=call, args=("A", [1, 7, 8]), name="A")
    ta.start()
    assert inside.wait(10)
    tb = threading.Thread(target=call, args=("B", [1, 9]), name="B")
    tb.start()
    tb.join(0.5)
    waited = tb.is_alive()
    release.set()
    ta.join(30)
    tb.join(30)
    assert waited, "B ran while A's call was in progress"
    assert results == {"A": want_a, "B": want_b}


def test_a_stream_interrupted_by_another_thread_raises(model) -> None:
    stream = model.generate([1, 2, 3], max_tokens=20, temperature=0, stream=True, ignore_eos=True)
    next(stream)
    t = threading.Thread(target=lambda: model.generate([1, 4], max_tokens=1, temperature=0))
    t.start()
    t.join(60)
    with pytest.raises(RuntimeError, match="interrupted"):
        list(stream)


# ---------------------------------------------------------------- finding 1: the render is bounded by n_ctx
def test_chat_render_is_refused_before_tokenizing_when_it_cannot_fit(model, monkeypatch) -> None:
    longest = max(len(t) for t in model.tokenizer.tokens)
    limit = model.n_ctx * longest
    calls = []
    real = model.tokenizer.encode
    monkeypatch.setattr(model.tokenizer, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setitem(model.metadata, "tokenizer.chat_template", "{{ 'x' * %d }}" % (limit + 1))
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateLimitError, match=f"exceeds {limit} characters"):
        model.chat_prompt([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 1.0 and not calls  # refused without tokenizing
    monkeypatch.setitem(model.metadata, "tokenizer.chat_template", "{{ 'x' * %d }}" % limit)
    assert len(model.chat_prompt([{"role": "user", "content": "hi"}])) > 0  # at the bound: rendered, tokenized


# ---------------------------------------------------------------- finding 7: prompt text, temperature
@pytest.mark.parametrize("prompt, frag", [
    ("ab\ud800cd", r"lone surrogate '\\ud800' at position 2"),
    (b"ab\xff\xfe", "not valid UTF-8 .byte 2"),
])
def test_bad_prompt_text_is_a_clear_error(model, prompt, frag) -> None:
    for call in (lambda: model.generate(prompt, max_tokens=1), lambda: model.tokenize(prompt)):
        with pytest.raises(ValueError, match=frag):  # was RuntimeError from SentencePiece
            call()
    with pytest.raises(ValueError, match="lone surrogate"):
        model.chat_prompt([{"role": "user", "content": "x\udfff"}])


def test_vanishing_temperature_is_greedy(model) -> None:
    greedy = model.generate([1, 2, 3], max_tokens=4, temperature=0).tokens
    for t in (1e-310, 5e-324, 1e-300):
        assert model.generate([1, 2, 3], max_tokens=4, temperature=t, seed=3).tokens == greedy, t


# ---------------------------------------------------------------- finding 7: the command line
def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tilellm.llm.cli.run", *args]


def test_dev_zero_prompt_is_bounded() -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    t0 = time.monotonic()
    r = subprocess.run(_cmd(str(fixture_path(LLAMA)), "-f", "/dev/zero"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "longer than" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and time.monotonic() - t0 < 60


def test_closed_stdout_is_a_clear_error() -> None:
    r = subprocess.run(_cmd(str(fixture_path(LLAMA)), "-p", "hi", "-n", "2"), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, timeout=120, close_fds=True,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and "stdout is closed" in r.stderr and "AttributeError" not in r.stderr


def test_ctrl_c_twice_prints_timings_and_exits_130(long_synth: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(_cmd(str(long_synth), "-p", "start:", "-c", "8192", "--ignore-eos", "--backend", "reference",
                              "-s", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        got = b""
        deadline = time.monotonic() + 60
        while len(got) < len(b"start:") and time.monotonic() < deadline:
            b = os.read(p.stdout.fileno(), 4096)  # type: ignore[union-attr]
            if not b:
                break
            got += b
        assert got.startswith(b"start:"), got
        time.sleep(1.0)
        assert p.poll() is None
        p.send_signal(signal.SIGINT)
        time.sleep(0.05)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # the second one, while the first is being handled
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err  # was killed by the signal (-2) on the second Ctrl-C
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
    assert b"eval time =" in err  # the timings so far
