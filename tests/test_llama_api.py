"""llama-cpp-python's README examples, written as its users write them, with only the import changed.

Shapes and values are checked against the native API (`Model.generate`, `Model.eval`) on the micro fixtures.
"""
from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
from conftest import fixture_path

import tilellm
from tilellm import Llama  # was: from llama_cpp import Llama

HAVE_CONSTRAIN = importlib.util.find_spec("tilellm.llm.text.constrain") is not None


@pytest.fixture(scope="module")
def llm() -> Llama:
    m = Llama(model_path=str(fixture_path("llama2-micro-q8_0.gguf")), n_ctx=256, verbose=False, embedding=True,
              backend="reference")
    yield m
    m.close()


@pytest.fixture(scope="module")
def native() -> tilellm.Model:
    m = tilellm.load(fixture_path("llama2-micro-q8_0.gguf"), n_ctx=256, backend="reference")
    yield m
    m.close()


def _check_completion(out: dict) -> None:
    assert set(out) >= {"id", "object", "created", "model", "choices", "usage"}
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert isinstance(out["created"], int)
    ch = out["choices"][0]
    assert set(ch) == {"text", "index", "logprobs", "finish_reason"} and ch["index"] == 0
    assert ch["finish_reason"] in ("stop", "length")
    u = out["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


# ------------------------------------------------------------------ README: high-level API


def test_readme_completion(llm: Llama, native: tilellm.Model) -> None:
    output = llm(
        "Q: Name the planets in the solar system? A: ",  # Prompt
        max_tokens=32,  # Generate up to 32 tokens, set to None to generate up to the end of the context window
        stop=["Q:", "\n"],  # Stop generating just before the model would generate a new question
        echo=True,  # Echo the prompt back in the output
        temperature=0,
    )
    _check_completion(output)
    text = output["choices"][0]["text"]
    want = native.generate("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\n"],
                           temperature=0)
    assert text == "Q: Name the planets in the solar system? A: " + want.text
    assert output["usage"]["completion_tokens"] == want.completion_tokens
    assert output["usage"]["prompt_tokens"] == want.prompt_tokens == len(native.tokenize(
        "Q: Name the planets in the solar system? A: "))
    assert output["model"] == llm.model_path


def test_completion_greedy_equals_generate(llm: Llama, native: tilellm.Model) -> None:
    out = llm.create_completion("Once upon a time", max_tokens=24, temperature=0.0)
    r = native.generate("Once upon a time", max_tokens=24, temperature=0)
    assert out["choices"][0]["text"] == r.text
    assert out["choices"][0]["finish_reason"] == r.finish_reason
    # token ids in, same answer
    out2 = llm.create_completion(native.tokenize("Once upon a time"), max_tokens=24, temperature=0.0)
    assert out2["choices"][0]["text"] == r.text


def test_readme_streaming(llm: Llama) -> None:
    plain = llm("The quick brown fox", max_tokens=20, seed=7)
    chunks = list(llm("The quick brown fox", max_tokens=20, seed=7, stream=True))
    assert all(c["object"] == "text_completion" and len({c["id"] for c in chunks}) == 1 for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert chunks[-1]["usage"] == plain["usage"]


def test_readme_chat_completion(llm: Llama, native: tilellm.Model) -> None:
    messages = [
        {"role": "system", "content": "You are an assistant who perfectly describes images."},
        {"role": "user", "content": "Describe this image in detail please."},
    ]
    out = llm.create_chat_completion(messages=messages, max_tokens=16, temperature=0)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    ch = out["choices"][0]
    assert ch["message"]["role"] == "assistant" and ch["finish_reason"] in ("stop", "length")
    want = native.chat(messages, max_tokens=16, temperature=0)
    assert ch["message"]["content"] == want.text
    assert out["usage"]["prompt_tokens"] == want.prompt_tokens
    # streamed: a role delta, content deltas, an empty delta with the finish reason
    chunks = list(llm.create_chat_completion(messages=messages, max_tokens=16, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == ch["finish_reason"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want.text


@pytest.mark.skipif(not HAVE_CONSTRAIN, reason="structured output (tilellm.llm.text.constrain) is not in this build")
def test_readme_json_mode(llm: Llama) -> None:
    out = llm.create_chat_completion(
        messages=[{"role": "system", "content": "You are a helpful assistant that outputs in JSON."},
                  {"role": "user", "content": "Who won the world series in 2020"}],
        response_format={"type": "json_object"}, temperature=0.7, max_tokens=64)
    ch = out["choices"][0]
    # any JSON object: a random-weight model may not close its strings within 64 tokens (finish "length"), but what
    # it writes is always JSON, and a finished reply parses
    assert ch["message"]["content"].startswith("{")
    if ch["finish_reason"] == "stop":
        assert isinstance(json.loads(ch["message"]["content"]), dict)
    # with a bounded schema every reply completes and parses (llama-cpp-python's JSON Schema mode)
    schema = {"type": "object", "properties": {"team_name": {"type": "string", "maxLength": 12}},
              "required": ["team_name"], "additionalProperties": False}
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "Who won the world series in 2020"}],
        response_format={"type": "json_object", "schema": schema}, temperature=0.7, max_tokens=64)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert set(json.loads(out["choices"][0]["message"]["content"])) == {"team_name"}


def test_json_mode_without_constrain_is_a_clear_error(llm: Llama) -> None:
    if HAVE_CONSTRAIN:
        pytest.skip("structured output is present")
    with pytest.raises(tilellm.UnsupportedError, match="tilellm.llm.text.constrain"):
        llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}],
                                   response_format={"type": "json_object"})


def test_readme_embeddings(llm: Llama, native: tilellm.Model) -> None:
    out = llm.create_embedding("Hello, world!")
    assert out["object"] == "list" and out["data"][0]["object"] == "embedding" and out["data"][0]["index"] == 0
    e = np.array(out["data"][0]["embedding"])
    assert e.shape == (llm.n_embd(),)
    assert abs(np.linalg.norm(e) - 1) < 1e-5  # normalised
    n = len(llm.tokenize(b"Hello, world!"))
    assert out["usage"] == {"prompt_tokens": n, "total_tokens": n}
    # mean of the final-normed hidden states: check one against the native API and the logits (head(h) == logits)
    ids = native.tokenize("Hello, world!")
    raw = native.embed(ids, pooling="none", normalize=False)
    assert raw.shape == (n, llm.n_embd())
    np.testing.assert_allclose(e, raw.mean(0) / np.linalg.norm(raw.mean(0)), rtol=1e-5, atol=1e-6)
    native.reset()
    logits = native.eval(ids, logits_all=True)
    head = native.decoder.backend.matmul(native.decoder.output, raw)
    np.testing.assert_allclose(head, logits, rtol=1e-4, atol=1e-4)
    many = llm.embed(["Hello, world!", "Goodbye"])
    assert len(many) == 2 and np.allclose(many[0], e, atol=1e-6) and not np.allclose(many[1], e, atol=1e-3)


def test_embedding_needs_embedding_true() -> None:
    m = Llama(model_path=str(fixture_path("llama2-micro-q8_0.gguf")), n_ctx=64, verbose=False, backend="reference")
    with pytest.raises(ValueError, match="embedding=True"):
        m.embed("hi")
    m.close()


def test_tokenize_detokenize(llm: Llama) -> None:
    ids = llm.tokenize(b"Hello, world!")
    assert ids[0] == llm.token_bos()
    assert llm.tokenize(b"Hello, world!", add_bos=False) == ids[1:]
    assert llm.detokenize(ids) == b"Hello, world!"
    assert isinstance(llm.detokenize(ids), bytes)
    assert llm.n_ctx() == 256 and llm.n_vocab() == llm.model.n_vocab
    assert llm.token_eos() != llm.token_bos()
    assert llm.metadata["general.architecture"] == "llama"
    assert all(isinstance(v, str) for v in llm.metadata.values())


def test_tokenize_follows_the_models_add_bos() -> None:
    # Qwen2 GGUFs from llama.cpp's converter say add_bos_token = false; the fixture says true, so flip the flag
    path = fixture_path("qwen2-micro-q8_0.gguf")
    m = tilellm.load(path, n_ctx=64, backend="reference")
    assert len(m.tokenize("Hello world")) == 7 and m.tokenize("Hello world")[0] == m.tokenizer.bos_id
    m.tokenizer.add_bos = False
    ids = m.tokenize("Hello world")
    assert len(ids) == 6 and ids[0] != m.tokenizer.bos_id
    assert m.generate("Hello world", max_tokens=1, temperature=0).prompt_tokens == len(ids)  # what generate uses
    assert m.tokenize("Hello world", add_bos=True) == [m.tokenizer.bos_id] + ids  # forced
    m.close()
    q = Llama(model_path=str(path), n_ctx=64, verbose=False, backend="reference")
    with_bos = q.tokenize(b"Hello world")
    q.model.tokenizer.add_bos = False
    assert q.tokenize(b"Hello world") == with_bos[1:] == ids  # llama.cpp: add_bos only where the model adds one
    q.close()


def test_save_load_state(llm: Llama) -> None:
    llm.reset()
    llm.eval(llm.tokenize(b"The capital of France is"))
    state = llm.save_state()
    assert state.n_tokens == llm.n_tokens == len(llm.tokenize(b"The capital of France is"))
    after = llm.scores[-1].copy()
    llm.eval(llm.tokenize(b" a city", add_bos=False))
    assert llm.n_tokens > state.n_tokens
    llm.load_state(state)
    assert llm.n_tokens == state.n_tokens
    assert list(llm.input_ids) == list(state.input_ids)
    nxt = llm.tokenize(b" Paris", add_bos=False)
    llm.eval(nxt)
    restored = llm.scores[-1].copy()
    llm.reset()
    llm.eval(llm.tokenize(b"The capital of France is") + nxt)
    np.testing.assert_allclose(restored, llm.scores[-1], rtol=1e-5, atol=1e-5)
    assert not np.array_equal(after, restored)


# ------------------------------------------------------------------ sampling extras


def test_logprobs_match_the_logits(llm: Llama, native: tilellm.Model) -> None:
    out = llm("Once upon a time", max_tokens=4, temperature=0, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    assert lp["text_offset"][0] == len("Once upon a time")
    ids = native.tokenize("Once upon a time")
    native.reset()
    logits = native.eval(ids).astype(np.float64)
    want = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    first = int(np.argmax(logits))
    assert lp["token_logprobs"][0] == pytest.approx(want[first], abs=1e-6)
    top = lp["top_logprobs"][0]
    assert len(top) == 3 and max(top.values()) == pytest.approx(want.max(), abs=1e-6)
    assert sorted(top.values(), reverse=True) == pytest.approx(sorted(want, reverse=True)[:3], abs=1e-6)
    # echo: the prompt's tokens too, the first without a logprob
    e = llm("Once upon a time", max_tokens=2, temperature=0, logprobs=1, echo=True)["choices"][0]
    assert e["text"].startswith("Once upon a time")
    assert e["logprobs"]["token_logprobs"][0] is None and len(e["logprobs"]["tokens"]) == len(ids) + 2


def test_penalties_change_what_they_should(native: tilellm.Model) -> None:
    from tilellm.llm.text.sampling import Sampler

    logits = np.array([2.0, 1.0, 0.5, -1.0], np.float32)
    hist = [0, 0, 0, 2]
    s = Sampler(temperature=0, frequency_penalty=0.5, presence_penalty=0.25)
    np.testing.assert_allclose(s.apply_penalty(logits, hist), [2.0 - 1.5 - 0.25, 1.0, 0.5 - 0.5 - 0.25, -1.0])
    s = Sampler(temperature=0, logit_bias={"3": 10.0})
    assert s.sample(logits, hist) == 3
    # on the model: a logit bias makes greedy decoding repeat one token; the penalties stop that as they should
    prompt = native.tokenize("Once upon a time")
    x = next(t for t in range(100, native.n_vocab) if t not in prompt)
    r = native.generate(prompt, max_tokens=12, temperature=0, logit_bias={x: 50.0})
    assert r.tokens == [x] * 12
    p = native.generate(prompt, max_tokens=12, temperature=0, logit_bias={x: 50.0}, presence_penalty=100.0)
    assert p.tokens[0] == x and x not in p.tokens[1:]
    f = native.generate(prompt, max_tokens=12, temperature=0, logit_bias={x: 50.0}, frequency_penalty=20.0)
    assert 1 < f.tokens.count(x) < 12 and f.tokens[:2] == [x, x]
    w = native.generate(prompt, max_tokens=12, temperature=0, logit_bias={x: 50.0}, presence_penalty=100.0,
                        repeat_last_n=3)  # the window forgets x after three tokens
    assert w.tokens[0] == x and w.tokens.count(x) > 1
    # the chain on real logits, by hand: bias, then penalties, then argmax
    native.reset()
    logits = native.eval(prompt)
    want = logits.astype(np.float32).copy()
    top = int(np.argmax(logits))
    want[top] += 3.0  # logit_bias
    want[np.unique(prompt)] -= 1000.0  # presence penalty over the window (the whole prompt)
    got = native.generate(prompt, max_tokens=1, temperature=0, presence_penalty=1000.0, logit_bias={top: 3.0})
    assert got.tokens[0] == int(np.argmax(want))


def test_logits_processor_and_stopping_criteria(llm: Llama, native: tilellm.Model) -> None:
    banned = native.generate("Once upon a time", max_tokens=1, temperature=0).tokens[0]
    seen = []

    def ban(input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        seen.append(len(input_ids))
        logits[banned] = -np.inf
        return logits

    out = llm("Once upon a time", max_tokens=6, temperature=0, logits_processor=[ban], logprobs=0)
    assert seen[:2] == [len(native.tokenize("Once upon a time")), len(native.tokenize("Once upon a time")) + 1]
    assert out["choices"][0]["logprobs"]["tokens"][0] != llm.detokenize([banned]).decode()
    stop = llm("Once upon a time", max_tokens=20, temperature=0,
               stopping_criteria=lambda ids, logits: len(ids) >= len(native.tokenize("Once upon a time")) + 3)
    assert stop["usage"]["completion_tokens"] == 3 and stop["choices"][0]["finish_reason"] == "stop"
    t = native.generate("Once upon a time", max_tokens=8, temperature=0.9, typical_p=0.5, seed=1)
    assert t.completion_tokens == 8


def test_low_level_generate(llm: Llama, native: tilellm.Model) -> None:
    want = native.generate("Once upon a time", max_tokens=6, temperature=0, ignore_eos=True).tokens
    got = []
    for tok in llm.generate(llm.tokenize(b"Once upon a time"), temp=0):
        got.append(tok)
        if len(got) == 6:
            break
    assert got == want


def test_gpu_arguments_warn_once_and_unsupported_ones_fail() -> None:
    import tilellm.llm.llama as mod

    mod._GPU_WARNED = False
    path = str(fixture_path("llama2-micro-q8_0.gguf"))
    with pytest.warns(UserWarning, match="CPU engine"):
        Llama(model_path=path, n_gpu_layers=-1, main_gpu=0, flash_attn=True, n_ctx=32, verbose=False,
              backend="reference", n_threads_batch=2, logits_all=True, chat_format=None).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Llama(model_path=path, n_gpu_layers=99, n_ctx=32, verbose=False, backend="reference").close()
    with pytest.raises(tilellm.UnsupportedError, match="lora_path"):
        Llama(model_path=path, lora_path="x.bin", verbose=False)
    # suffix on a model without FIM tokens: appended to the text, as llama-cpp-python does (tests/test_infill_tools.py)
    with Llama(model_path=path, n_ctx=32, verbose=False, backend="reference") as m:
        assert m("a", suffix="b", max_tokens=2, temperature=0)["choices"][0]["text"].endswith("b")


# ------------------------------------------------------------------ prefix reuse


@pytest.mark.parametrize("fixture", ["llama2-micro-q8_0", "qwen2-micro-q8_0"])
def test_five_turn_chat_evaluates_only_new_tokens(fixture: str) -> None:
    kept = tilellm.load(fixture_path(f"{fixture}.gguf"), n_ctx=512)
    fresh = tilellm.load(fixture_path(f"{fixture}.gguf"), n_ctx=512)
    messages: list[dict] = [{"role": "system", "content": "You are terse."}]
    prev_ids: list[int] = []
    for turn in range(5):
        messages.append({"role": "user", "content": f"Question {turn}: what comes next after {turn}?"})
        ids = kept.chat_prompt(messages)
        cached = kept.context_tokens
        common = 0
        while common < min(len(cached), len(ids)) and cached[common] == ids[common]:
            common += 1
        before = kept.n_evaluated
        r = kept.generate(ids, max_tokens=12, temperature=0)
        after = kept.context_tokens
        assert after[:len(ids)] == ids
        # the forward pass saw the prompt's new tokens, then each generated token that was fed back
        n_prompt_evaluated = kept.n_evaluated - before - (len(after) - len(ids))
        fresh.reset()
        f = fresh.generate(ids, max_tokens=12, temperature=0)
        assert r.tokens == f.tokens and r.text == f.text  # the same greedy answer as from scratch
        assert r.cached_tokens == min(common, len(ids) - 1)
        assert n_prompt_evaluated == len(ids) - r.cached_tokens
        if turn > 0:  # everything up to the previous answer was reused
            assert r.cached_tokens >= len(prev_ids)
        prev_ids = ids
        messages.append({"role": "assistant", "content": r.text})
    kept.close()
    fresh.close()


def test_prefix_reuse_logits_and_reset(native: tilellm.Model) -> None:
    ids = native.tokenize("The quick brown fox jumps over the lazy dog")
    native.reset()
    full = native.eval(ids)
    native.generate(ids[:5], max_tokens=1, temperature=0)  # cache: ids[:5] (+ nothing evaluated after)
    before = native.n_evaluated
    r = native.generate(ids, max_tokens=1, temperature=0, logprobs=1)
    assert r.cached_tokens == 5 and native.n_evaluated - before == len(ids) - 5
    assert r.tokens[0] == int(np.argmax(full))
    lse = np.log(np.exp(full.astype(np.float64) - full.max()).sum()) + full.max()
    assert r.logprobs[0].logprob == pytest.approx(float(full.max()) - lse, abs=1e-5)
    native.reset()
    before = native.n_evaluated
    assert native.generate(ids, max_tokens=1, temperature=0).cached_tokens == 0
    assert native.n_evaluated - before == len(ids)


# ------------------------------------------------------------------ packaging fixes


def test_packaging_and_exports() -> None:
    import inspect
    from pathlib import Path

    sig = inspect.signature(tilellm.load)
    assert list(sig.parameters)[:3] == ["path", "n_ctx", "n_threads"]
    assert all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())
    assert (Path(tilellm.__file__).parent / "py.typed").exists()
    assert tilellm.Model is tilellm.llm.api.Model and tilellm.GenerationResult is not None
    assert issubclass(tilellm.UnsupportedError, tilellm.TileLLMError)
    assert set(tilellm.supported_architectures()) >= {"llama", "qwen2", "gemma3", "deepseek2"}
    from tilellm.llm.api import _arch_factory

    with pytest.raises(tilellm.UnsupportedError) as e:
        _arch_factory("mamba")
    assert all(a in str(e.value) for a in ("llama", "qwen2", "gemma3", "deepseek2"))
    lic = Path(__file__).parent.parent / "LICENSE"
    assert "MIT License" in lic.read_text() and "the tilellm authors" in lic.read_text()


def test_python_dash_m_tilellm() -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "tilellm", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--n-predict" in p.stdout
