"""llm-server over real HTTP: the official ``openai`` client for the API, raw httpx for the errors.

A real uvicorn server runs in a thread of this process on a free 127.0.0.1 port, serving the micro
LLaMA fixture; greedy answers are compared with ``tilellm.load(...).generate(..., temperature=0)``.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import tilellm  # noqa: E402
from tilellm.llm.server import Engine, ModelPerSlotRunner  # noqa: E402
from tilellm.llm.server.app import ServerSettings, create_app  # noqa: E402

MODEL = os.path.join(os.path.dirname(__file__), "data", "llama2-micro-q8_0.gguf")
KEY = "test-key-123"
MAX_BODY = 64 << 10
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "Roses are red,",
           "In the beginning", "My favourite colour", "Numbers: one, two,", "Dear diary, today"]


class _Server:
    """uvicorn serving ``app`` in a background thread on a free port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _serve(n_slots: int, max_queue: int, api_key: str | None = KEY,
           per_slot: bool = False) -> Iterator[tuple[_Server, Engine]]:
    models = [tilellm.load(MODEL, n_threads=1) for _ in range(n_slots if per_slot else 1)]
    runner = ModelPerSlotRunner(models) if per_slot else None
    engine = Engine(models[0], n_slots=n_slots, max_queue=max_queue, runner=runner).start()
    app = create_app(engine, ServerSettings(model_id="micro", api_key=api_key, max_body=MAX_BODY))
    try:
        with _Server(app) as srv:
            yield srv, engine
    finally:
        engine.close()
        for m in models:
            m.close()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[_Server, Engine]]:
    yield from _serve(n_slots=4, max_queue=128)


@pytest.fixture(scope="module")
def url(served: tuple[_Server, Engine]) -> str:
    return served[0].url


@pytest.fixture(scope="module")
def ref() -> Iterator[Any]:
    with tilellm.load(MODEL, n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture()
def http(url: str) -> Iterator[Any]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def _metrics(http: Any) -> dict[str, float]:
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _wait_idle(http: Any, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(http)
        if m["tilellm_slots_busy"] == 0 and m["tilellm_queue_length"] == 0:
            return m
        assert time.monotonic() < deadline, f"slots still busy: {m['tilellm_slots_busy']}"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- the API via openai

def test_models_health_and_cli_defaults(client: Any, url: str) -> None:
    assert [m.id for m in client.models.list().data] == ["micro"]
    assert httpx.get(url + "/health").json()["status"] == "ok"  # no key needed
    from tilellm.llm.server.cli import build_parser

    args = build_parser().parse_args([])
    assert (args.host, args.port, args.parallel, args.model) == ("127.0.0.1", 8080, 1, None)


def test_completion_greedy_equals_generate(client: Any, ref: Any) -> None:
    want = ref.generate(PROMPTS[0], max_tokens=16, temperature=0)
    r = client.completions.create(model="micro", prompt=PROMPTS[0], max_tokens=16, temperature=0)
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, 16)
    assert r.usage.total_tokens == want.prompt_tokens + 16 and r.object == "text_completion"


def test_completion_stream_with_usage(client: Any, ref: Any) -> None:
    want = ref.generate(PROMPTS[1], max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="micro", prompt=PROMPTS[1], max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == want.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_chat_greedy_and_stream_equal_generate(client: Any, ref: Any, served: tuple[_Server, Engine],
                                               http: Any) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    ids = ref.chat_prompt(messages)
    want = ref.generate(ids, max_tokens=10, temperature=0)
    engine = served[1]
    _wait_idle(http)
    # the batched runner (the default) reuses the longest prefix any free slot's cache shares with the prompt
    shared = max(engine.runner.reusable(slot, ids) for slot in range(engine.n_slots))
    r = client.chat.completions.create(model="micro", messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want.text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert r.usage.prompt_tokens_details.cached_tokens == shared
    # the next turn extends this conversation: its slot holds the prompt and the reply, but for a reply cut by
    # max_tokens its last token (sampled, never evaluated), so exactly their common prefix with the new prompt is
    # reused
    turn2 = messages + [{"role": "assistant", "content": want.text}, {"role": "user", "content": "Another?"}]
    ids2 = ref.chat_prompt(turn2)
    # (after an end-of-generation token every reply token was evaluated)
    held = ids + (want.tokens if want.finish_reason == "stop" else want.tokens[:-1])
    r2 = client.chat.completions.create(model="micro", messages=turn2, max_tokens=4, temperature=0)
    assert r2.usage.prompt_tokens_details.cached_tokens == min(_common(held, ids2), len(ids2) - 1)
    assert r2.usage.prompt_tokens_details.cached_tokens > len(ids) // 2
    stream = client.chat.completions.create(model="micro", messages=messages, max_completion_tokens=10,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert chunks[-2].choices[0].finish_reason == want.finish_reason
    assert chunks[-1].usage.completion_tokens == want.completion_tokens


def test_stop_seed_and_n(client: Any, ref: Any) -> None:
    full = ref.generate(PROMPTS[2], max_tokens=24, temperature=0).text
    stop = full[8:11]
    want = ref.generate(PROMPTS[2], max_tokens=24, temperature=0, stop=[stop])
    r = client.completions.create(model="micro", prompt=PROMPTS[2], max_tokens=24, temperature=0, stop=stop)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want.text, "stop")
    # seeded sampling draws generate's tokens; unset fields (top_k, min_p) take generate's defaults
    want = ref.generate(PROMPTS[3], max_tokens=12, temperature=0.9, top_p=0.8, seed=42)
    r = client.completions.create(model="micro", prompt=PROMPTS[3], max_tokens=12, temperature=0.9, top_p=0.8,
                                  seed=42, n=2)
    assert r.choices[0].text == want.text and [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == want.prompt_tokens
    # the extensions, and the whole vocabulary (top_k 0)
    want = ref.generate(PROMPTS[3], max_tokens=12, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=7)
    r = client.completions.create(model="micro", prompt=PROMPTS[3], max_tokens=12, temperature=1.0, top_p=1.0,
                                  seed=7, extra_body={"top_k": 0, "min_p": 0.0})
    assert r.choices[0].text == want.text


def test_token_prompts_batches_and_echo(client: Any, ref: Any) -> None:
    ids = ref.tokenize(PROMPTS[5], add_bos=None, special=True)
    want = [ref.generate(p, max_tokens=6, temperature=0) for p in (PROMPTS[5], PROMPTS[6])]
    r = client.completions.create(model="micro", prompt=ids, max_tokens=6, temperature=0)
    assert r.choices[0].text == want[0].text and r.usage.prompt_tokens == len(ids)
    r = client.completions.create(model="micro", prompt=[PROMPTS[5], PROMPTS[6]], max_tokens=6, temperature=0,
                                  echo=True)
    assert [c.text for c in r.choices] == [PROMPTS[5] + want[0].text, PROMPTS[6] + want[1].text]
    assert r.usage.prompt_tokens == want[0].prompt_tokens + want[1].prompt_tokens
    assert r.usage.completion_tokens == 12


def test_penalties_logit_bias_and_seed_equal_generate(client: Any, ref: Any) -> None:
    want = ref.generate(PROMPTS[3], max_tokens=12, temperature=0.9, seed=5, presence_penalty=0.6,
                        frequency_penalty=0.4, logit_bias={17: 4.0, 29: -100.0})
    r = client.completions.create(model="micro", prompt=PROMPTS[3], max_tokens=12, temperature=0.9, seed=5,
                                  presence_penalty=0.6, frequency_penalty=0.4, logit_bias={"17": 4, "29": -100})
    assert r.choices[0].text == want.text
    messages = [{"role": "user", "content": "Count: one one one"}]
    want = ref.generate(ref.chat_prompt(messages), max_tokens=10, temperature=0, frequency_penalty=1.5,
                        presence_penalty=-0.5)
    stream = client.chat.completions.create(model="micro", messages=messages, max_tokens=10, temperature=0,
                                            frequency_penalty=1.5, presence_penalty=-0.5, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want.text
    # a ban: the greedy first token, biased by -100, is never chosen
    first = ref.generate(PROMPTS[0], max_tokens=1, temperature=0).tokens[0]
    want = ref.generate(PROMPTS[0], max_tokens=8, temperature=0, logit_bias={first: -100.0})
    r = client.completions.create(model="micro", prompt=PROMPTS[0], max_tokens=8, temperature=0,
                                  logit_bias={str(first): -100})
    assert r.choices[0].text == want.text and first not in want.tokens


def test_logprobs_equal_generate(client: Any, ref: Any) -> None:
    want = ref.generate(PROMPTS[1], max_tokens=8, temperature=0, logprobs=3)
    r = client.completions.create(model="micro", prompt=PROMPTS[1], max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert lp.token_logprobs == pytest.approx([x.logprob for x in want.logprobs], abs=1e-9)
    for got, w in zip(lp.top_logprobs, want.logprobs):  # keyed by text: tokens spelled alike share a key
        assert all(any(v == pytest.approx(t, abs=1e-9) for t in w.top.values()) for v in got.values())
        assert max(got.values()) == pytest.approx(max(w.top.values()), abs=1e-9)  # greedy took the best
    assert lp.text_offset[0] == len(PROMPTS[1])  # offsets count from the start of the prompt
    assert [b - a for a, b in zip(lp.text_offset, lp.text_offset[1:])] == [len(t) for t in lp.tokens[:-1]]
    chunks = list(client.completions.create(model="micro", prompt=PROMPTS[1], max_tokens=8, temperature=0,
                                            logprobs=3, stream=True))
    streamed = [v for c in chunks if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs]
    assert streamed == lp.token_logprobs
    # chat: {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}
    messages = [{"role": "user", "content": "Say something."}]
    want = ref.generate(ref.chat_prompt(messages), max_tokens=6, temperature=0, logprobs=2)
    r = client.chat.completions.create(model="micro", messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx([x.logprob for x in want.logprobs], abs=1e-9)
    assert [c.bytes for c in content] == [list(ref.tokenizer.token_to_piece(t, special=False)) for t in want.tokens]
    assert [[t.logprob for t in c.top_logprobs] for c in content] == \
        [pytest.approx(list(x.top.values()), abs=1e-9) for x in want.logprobs]
    stream = client.chat.completions.create(model="micro", messages=messages, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=2, stream=True)
    streamed = [e.logprob for c in stream if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content or []]
    assert streamed == [c.logprob for c in content]
    # without the request, no log-probabilities
    r = client.chat.completions.create(model="micro", messages=messages, max_tokens=2, temperature=0)
    assert r.choices[0].logprobs is None


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def test_response_format_outputs_parse_and_validate(client: Any) -> None:
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(3):
        r = client.chat.completions.create(model="micro", messages=[{"role": "user", "content": "A person?"}],
                                           temperature=1.0, seed=seed, n=4, max_tokens=64, response_format=fmt)
        for c in r.choices:
            assert c.finish_reason == "stop"
            jsonschema.validate(json.loads(c.message.content), PERSON)
    # llama-cpp-python's json_object + schema, on /v1/completions (an extension), streamed
    for seed in range(3):
        s = client.completions.create(model="micro", prompt="Person as JSON:", max_tokens=64, temperature=1.0,
                                      seed=seed, stream=True,
                                      extra_body={"response_format": {"type": "json_object", "schema": PERSON}})
        jsonschema.validate(json.loads("".join(c.choices[0].text for c in s if c.choices)), PERSON)


def test_tokenize_detokenize(http: Any, ref: Any) -> None:
    ids = http.post("/tokenize", json={"content": "Hello world", "add_special": True}).json()["tokens"]
    assert ids == ref.tokenize("Hello world", add_bos=None, special=True)
    assert http.post("/detokenize", json={"tokens": ids}).json()["content"] == "Hello world"


# ----------------------------------------------------------------------------- errors via raw HTTP

def _err(resp: Any, status: int, code: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return str(err["message"])


def test_bad_requests_are_400(http: Any, served: tuple[_Server, Engine]) -> None:
    n_ctx = served[1].n_ctx
    _err(http.post("/v1/completions", content=b'{"prompt": "x",', headers={"Content-Type": "application/json"}),
         400, "invalid_json")
    _err(http.post("/v1/completions", content=b"[1, 2]"), 400, "invalid_json")
    msg = _err(http.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "bogus": 1}), 400,
               "unknown_parameter")
    assert "bogus" in msg
    assert "unknown field 'messages[0].colour'" in _err(http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi", "colour": "red"}]}), 400)
    assert "max_tokens" in _err(http.post("/v1/completions", json={"prompt": "x", "max_tokens": -5}), 400)
    assert "max_tokens" in _err(http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}), 400)
    _err(http.post("/v1/completions", json={"prompt": "x", "temperature": "hot"}), 400)
    _err(http.post("/v1/completions", json={"prompt": "x", "presence_penalty": 2.5}), 400)  # OpenAI's [-2, 2]
    _err(http.post("/v1/completions", json={"prompt": "x", "temperature": "0.5"}), 400)  # a number, not a string
    _err(http.post("/v1/chat/completions", json={"messages": []}), 400)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert "logprobs" in _err(http.post("/v1/chat/completions", json={**chat, "top_logprobs": 2}), 400)
    _err(http.post("/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 21}), 400)
    _err(http.post("/v1/completions", json={"prompt": "x", "logprobs": 3, "echo": True}), 400)
    _err(http.post("/v1/completions", json={"prompt": "x", "logit_bias": {"abc": 1}}), 400)
    _err(http.post("/v1/completions", json={"prompt": "x", "logit_bias": {"5": 101}}), 400)
    assert "out of range" in _err(http.post("/v1/completions", json={"prompt": "x", "logit_bias": {"999999": 1}}),
                                  400)
    _err(http.post("/v1/chat/completions", json={**chat, "response_format": {"type": "json_schema"}}), 400)
    _err(http.post("/v1/chat/completions", json={**chat, "response_format": {"type": "yaml"}}), 400)
    assert "no-such-type" in _err(http.post("/v1/chat/completions", json={
        **chat, "response_format": {"type": "json_object", "schema": {"type": "no-such-type"}}}), 400)
    _err(http.post("/v1/completions", json={"prompt": ["a", "b", "c"], "n": 8}), 400)  # 24 sequences > 16
    # null means the default, as OpenAI's API has it
    r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "temperature": None, "stop": None})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    # the context is checked before anything runs: a long prompt, and a short one with too many tokens
    long_prompt = [1] + [100] * n_ctx
    _err(http.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 1}), 400, "context_length_exceeded")
    _err(http.post("/v1/completions", json={"prompt": "x", "max_tokens": n_ctx}), 400, "context_length_exceeded")
    _err(http.post("/v1/detokenize", json={"tokens": [1]}), 404)
    assert "out of range" in _err(http.post("/detokenize", json={"tokens": [10**7]}), 400)
    assert _metrics(http)["tilellm_requests_submitted_total"] >= 0
    assert _wait_idle(http)["tilellm_slots_busy"] == 0


def test_api_key_and_body_limit(url: str, http: Any) -> None:
    body = {"prompt": "x", "max_tokens": 1}
    _err(httpx.post(url + "/v1/completions", json=body), 401, "invalid_api_key")
    _err(httpx.post(url + "/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}), 401)
    _err(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    big = {"prompt": "x" * (MAX_BODY + 10), "max_tokens": 1}
    _err(http.post("/v1/completions", json=big), 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}'

    _err(http.post("/v1/completions", content=chunked()), 413, "request_too_large")


# ----------------------------------------------------------------------------- disconnects and load

def test_disconnect_mid_stream_frees_the_slot(http: Any, url: str, ref: Any) -> None:
    before = _wait_idle(http)
    body = {"prompt": "A very long story", "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    break  # one chunk arrived: the sequence is running; now hang up
    after = _wait_idle(http)
    assert after['tilellm_requests_finished_total{reason="cancelled"}'] == \
        before['tilellm_requests_finished_total{reason="cancelled"}'] + 1
    # a non-streaming client that gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json={**body, "stream": False}, timeout=0.3)
    after = _wait_idle(http)
    assert after['tilellm_requests_finished_total{reason="cancelled"}'] == \
        before['tilellm_requests_finished_total{reason="cancelled"}'] + 2
    # and the server keeps serving
    want = ref.generate(PROMPTS[4], max_tokens=8, temperature=0)
    r = http.post("/v1/completions", json={"prompt": PROMPTS[4], "max_tokens": 8, "temperature": 0}).json()
    assert r["choices"][0]["text"] == want.text


def test_event_stream_pings_while_silent_and_stops_when_the_client_leaves() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from tilellm.llm.server.sse import EventStream, sse_data

    closed = threading.Event()

    async def gen() -> Any:
        try:
            yield sse_data({"n": 1})
            await asyncio.sleep(0.35)  # silence: keep-alive comments
            yield sse_data("[DONE]")
            await asyncio.sleep(30)    # the client hangs up meanwhile
        finally:
            closed.set()

    async def route(request: Any) -> Any:
        return EventStream(gen(), ping=0.1)

    with _Server(Starlette(routes=[Route("/s", route)])) as srv, httpx.Client(timeout=10) as c:
        with c.stream("GET", srv.url + "/s") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if line == "data: [DONE]":
                    break
        assert lines[0] == 'data: {"n":1}' and lines.count(": ping") >= 2, lines
        assert closed.wait(5), "the generator still runs after the client left"


@pytest.fixture(scope="module")
def per_slot_url() -> Iterator[str]:
    for srv, _ in _serve(n_slots=4, max_queue=128, per_slot=True):
        yield srv.url


@pytest.mark.parametrize("runner", ["batched", "per-slot"])
def test_64_concurrent_clients_each_equal_their_request_alone(runner: str, request: Any, ref: Any) -> None:
    url = request.getfixturevalue("url" if runner == "batched" else "per_slot_url")
    n_tok = 10
    # 64 distinct prompts, so an answer given to the wrong client cannot pass for its own
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(64)]
    chat_msgs = [[{"role": "user", "content": p}] for p in prompts]
    want_text = [ref.generate(p, max_tokens=n_tok, temperature=0).text if i % 2 == 0 else ""
                 for i, p in enumerate(prompts)]
    want_chat = [ref.generate(ref.chat_prompt(m), max_tokens=n_tok, temperature=0).text if i % 2 else ""
                 for i, m in enumerate(chat_msgs)]
    assert len(set(want_text) | set(want_chat)) > 32  # the answers differ, not only the prompts

    async def one(c: Any, i: int) -> tuple[str, str, int]:
        k, kind = i, i % 4
        if kind == 0:
            r = await c.completions.create(model="micro", prompt=prompts[k], max_tokens=n_tok, temperature=0)
            return r.choices[0].text, want_text[k], r.usage.completion_tokens
        if kind == 1:
            r = await c.chat.completions.create(model="micro", messages=chat_msgs[k], max_tokens=n_tok,
                                                temperature=0)
            return r.choices[0].message.content, want_chat[k], r.usage.completion_tokens
        if kind == 2:
            s = await c.completions.create(model="micro", prompt=prompts[k], max_tokens=n_tok, temperature=0,
                                           stream=True, stream_options={"include_usage": True})
            parts, usage = [], None
            async for ch in s:
                parts += [x.text for x in ch.choices]
                usage = ch.usage or usage
            return "".join(parts), want_text[k], usage.completion_tokens
        s = await c.chat.completions.create(model="micro", messages=chat_msgs[k], max_tokens=n_tok, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
        parts, usage = [], None
        async for ch in s:
            parts += [x.delta.content or "" for x in ch.choices]
            usage = ch.usage or usage
        return "".join(parts), want_chat[k], usage.completion_tokens

    async def main() -> list[tuple[str, str, int]]:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
            return await asyncio.gather(*(one(c, i) for i in range(64)))

    results = asyncio.run(main())
    assert len(results) == 64
    for i, (got, want, n) in enumerate(results):
        assert got == want, f"client {i} got another answer"
        assert n == n_tok
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        m = _wait_idle(http)
    assert m["tilellm_slots_busy"] == 0 and m['tilellm_requests_finished_total{reason="length"}'] >= 64


def test_full_queue_is_503() -> None:
    for srv, _ in _serve(n_slots=1, max_queue=0, api_key=None):
        body = {"prompt": "Busy", "max_tokens": 1500, "temperature": 0, "stream": True}
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            with c.stream("POST", "/v1/completions", json=body) as resp:
                lines = resp.iter_lines()  # kept open: closing the iterator would drop the connection
                for line in lines:
                    if line.startswith("data: {"):
                        break
                _err(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}), 503, "queue_full")
            _wait_idle(c)
            r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
            m = _metrics(c)
            assert m['tilellm_http_requests_total{endpoint="/v1/completions",status="503"}'] == 1


def test_cli_errors_are_one_line(capsys: Any) -> None:
    from tilellm.llm.server.cli import main

    assert main(["-m", os.path.join(os.path.dirname(MODEL), "no-such-model.gguf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-model.gguf" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(["-np", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_python_m_server_starts_and_stops() -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "tilellm.llm.server", "-m", MODEL, "--port", str(port), "-t", "1", "-np", "2",
           "--runner", "per-slot", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "llm-server did not come up"
            time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "llama2-micro-q8_0.gguf"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert re.search(r"llama 3\.6M Q8_0, n_ctx 2048, 2 slot\(s\), per-slot runner", err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
