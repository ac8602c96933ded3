"""Tools (function calling) on llm-server's /v1/chat/completions, driven by the official ``openai`` client.

The server runs a copy of the micro LLaMA fixture whose chat template shows its tools and renders tool calls and
tool results (as Qwen's or Llama 3.1's templates do). A forced ``tool_choice`` must give the same call as
``tilellm.Llama.create_chat_completion`` (llama-cpp-python's API, issue #16) on the same file: its arguments are a
JSON object valid for the function's parameters, constrained token by token.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
jsonschema = pytest.importorskip("jsonschema")

from _gguf_copy import write_gguf  # noqa: E402
from conftest import MICRO_Q8  # noqa: E402
from test_server import _Server  # noqa: E402

import tilellm  # noqa: E402
from tilellm import Llama  # noqa: E402
from tilellm.llm.gguf.reader import open_gguf  # noqa: E402
from tilellm.llm.server import Engine  # noqa: E402
from tilellm.llm.server.app import ServerSettings, create_app  # noqa: E402

SRC = str(MICRO_Q8)
TEMPLATE = ("{% if tools %}<tools>{% for t in tools %}{{ t['function']['name'] }} {% endfor %}</tools>\n{% endif %}"
            "{% for m in messages %}{{ m['role'] }}: "
            "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}call {{ c['function']['name'] }}"
            "({{ c['function']['arguments'] }}) {% endfor %}"
            "{% elif m['role'] == 'tool' %}[{{ m['tool_call_id'] }}] {{ m['content'] }}"
            "{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast of a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 9},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "days", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
    "additionalProperties": False}}}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCE = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: Any) -> Path:
    f = open_gguf(SRC)
    md = {k: v for k, v in f.metadata.items() if k != "general.architecture"}
    md["tokenizer.chat_template"] = TEMPLATE
    dst = write_gguf(tmp_path_factory.mktemp("tools") / "micro-tools.gguf", f.arch, md, dict(f.tensors))
    f.close()
    return dst


@pytest.fixture(scope="module")
def url(model_path: Path) -> Iterator[str]:
    model = tilellm.load(str(model_path), n_threads=1)
    engine = Engine(model, n_slots=4).start()
    try:
        with _Server(create_app(engine, ServerSettings(model_id="micro"))) as srv:
            yield srv.url
    finally:
        engine.close()
        model.close()


@pytest.fixture(scope="module")
def client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def ref(model_path: Path) -> Iterator[Llama]:
    with Llama(model_path=str(model_path), n_ctx=512, verbose=False) as m:
        yield m


def test_forced_call_equals_llama_create_chat_completion(client: Any, ref: Llama) -> None:
    want = ref.create_chat_completion(MESSAGES, tools=[WEATHER, CLOCK], tool_choice=FORCE, temperature=0,
                                      max_tokens=96)
    r = client.chat.completions.create(model="micro", messages=MESSAGES, tools=[WEATHER, CLOCK], tool_choice=FORCE,
                                       temperature=0, max_tokens=96)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" == want["choices"][0]["finish_reason"]
    assert ch.message.content is None and ch.message.role == "assistant"
    (call,) = ch.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert call.function.arguments == want["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # the tools reached the template: the prompt is the one rendered with them
    ids = ref.model.chat_prompt(MESSAGES, tools=[WEATHER, CLOCK])
    assert r.usage.prompt_tokens == len(ids) > len(ref.model.chat_prompt(MESSAGES))


def test_streamed_and_sampled_calls(client: Any) -> None:
    kw: dict[str, Any] = dict(model="micro", messages=MESSAGES, tools=[WEATHER], tool_choice=FORCE, temperature=1.0,
                              seed=4, max_tokens=96)
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    chunks = list(client.chat.completions.create(stream=True, **kw))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.tool_calls[0].function.name == "get_weather"
    assert first.tool_calls[0].id.startswith("call_") and first.tool_calls[0].index == 0
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks
                   if c.choices and c.choices[0].delta.tool_calls)
    assert args == whole.function.arguments
    assert all(c.choices[0].delta.content is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # n choices: each a valid call with its own id
    r = client.chat.completions.create(**{**kw, "seed": 11}, n=3)
    ids = set()
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls"
        (call,) = ch.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        ids.add(call.id)
    assert len(ids) == 3


@pytest.mark.parametrize("choice", ["auto", "none", None])
def test_auto_and_none_reply_in_content(client: Any, ref: Llama, choice: Any) -> None:
    ids = ref.model.chat_prompt(MESSAGES, tools=[WEATHER])
    want = ref.model.generate(ids, max_tokens=12, temperature=0)
    extra = {} if choice is None else {"tool_choice": choice}
    r = client.chat.completions.create(model="micro", messages=MESSAGES, tools=[WEATHER], temperature=0,
                                       max_tokens=12, **extra)
    ch = r.choices[0]
    assert ch.message.content == want.text and ch.message.tool_calls is None
    assert ch.finish_reason == want.finish_reason and r.usage.prompt_tokens == len(ids)


def test_a_conversation_with_calls_and_results(client: Any, ref: Llama) -> None:
    r = client.chat.completions.create(model="micro", messages=MESSAGES, tools=[WEATHER], tool_choice=FORCE,
                                       temperature=0, max_tokens=96)
    call = r.choices[0].message.tool_calls[0]
    turn = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'}]
    ids = ref.model.chat_prompt([{**m, "content": m["content"] or ""} for m in turn], tools=[WEATHER])
    text = ref.model.detokenize(ids)
    assert f"call get_weather({call.function.arguments})" in text and f"[{call.id}] " in text
    want = ref.model.generate(ids, max_tokens=8, temperature=0)
    r2 = client.chat.completions.create(model="micro", messages=turn, tools=[WEATHER], temperature=0, max_tokens=8)
    assert r2.usage.prompt_tokens == len(ids) and r2.choices[0].message.content == want.text


def test_legacy_functions(client: Any) -> None:
    r = client.chat.completions.create(model="micro", messages=MESSAGES, functions=[CLOCK["function"]],
                                       function_call={"name": "get_time"}, temperature=0, max_tokens=64)
    call = r.choices[0].message.tool_calls[0].function
    assert call.name == "get_time" and r.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.arguments), CLOCK["function"]["parameters"])


def test_bad_tools_are_400(url: str) -> None:
    def err(body: dict[str, Any]) -> str:
        resp = httpx.post(url + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 4, **body})
        assert resp.status_code == 400, resp.text
        return str(resp.json()["error"]["message"])

    assert "not among the tools" in err({"tools": [WEATHER], "tool_choice": {"type": "function",
                                                                            "function": {"name": "nope"}}})
    assert "required" in err({"tools": [WEATHER], "tool_choice": "required"})
    assert "no tools" in err({"tool_choice": FORCE})
    assert "name" in err({"tools": [{"type": "function", "function": {"parameters": {}}}]})
    assert "tool_choice" in err({"tools": [WEATHER], "tool_choice": 3})
    assert "tools" in err({"tools": "get_weather"})
    assert "unknown field" in err({"messages": [{"role": "tool", "content": "x", "bogus": 1}]})
    assert "not both" in err({"tools": [WEATHER], "functions": [CLOCK["function"]]})
