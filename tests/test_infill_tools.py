"""llama-cpp-python's ``create_completion(suffix=...)`` (fill-in-the-middle) and ``create_chat_completion(tools=...,
tool_choice=...)`` on the micro fixtures: prompts built as llama-cpp-python builds them, tool-call arguments that
parse and validate against their schema."""
from __future__ import annotations

import json
import warnings
from typing import Any

import jsonschema
import pytest
from conftest import fixture_path
from test_hostile_metadata import _write

from tilellm import Llama
from tilellm.llm.text.infill import FimTokens, fim_tokens

LLAMA = "llama2-micro-q8_0"
PRE, SUF, MID = 3001, 3002, 3003  # ids the FIM copy of the fixture names as its FIM tokens


@pytest.fixture(scope="module")
def fim_path(tmp_path_factory: Any) -> str:
    dst = tmp_path_factory.mktemp("fim") / "fim.gguf"
    return str(_write(dst, {"tokenizer.ggml.fim_pre_token_id": PRE, "tokenizer.ggml.fim_suf_token_id": SUF,
                            "tokenizer.ggml.fim_mid_token_id": MID}))


@pytest.fixture(scope="module")
def plain() -> Llama:
    with Llama(model_path=str(fixture_path(f"{LLAMA}.gguf")), n_ctx=256, verbose=False) as m:
        yield m


# ------------------------------------------------------------------ FIM token ids

def test_fim_ids_from_keys_legacy_keys_and_token_texts() -> None:
    vocab = ["<unk>", "<s>", "</s>", "a", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<PRE>", "<SUF>"]
    md: dict[str, Any] = {"tokenizer.ggml.tokens": vocab}
    assert fim_tokens(md) == FimTokens(4, 5, 6) and fim_tokens(md).complete
    md["tokenizer.ggml.fim_pre_token_id"] = 7  # explicit ids win over texts
    md["tokenizer.ggml.suffix_token_id"] = 8   # the older key names count too
    assert fim_tokens(md) == FimTokens(7, 8, 6)
    md["tokenizer.ggml.fim_mid_token_id"] = 99  # out of range: ignored, the text is found instead
    assert fim_tokens(md).mid == 6
    assert not fim_tokens({"tokenizer.ggml.tokens": ["a", "<PRE>", "<SUF>"]}).complete  # no middle token
    assert fim_tokens({}) == FimTokens()


# ------------------------------------------------------------------ suffix

def test_suffix_without_fim_tokens_is_appended(plain: Llama) -> None:
    native = plain.model
    want = native.generate("def add(a, b):", max_tokens=10, temperature=0)
    out = plain.create_completion("def add(a, b):", suffix="\n# end", max_tokens=10, temperature=0)
    assert out["choices"][0]["text"] == want.text + "\n# end"
    assert out["usage"]["prompt_tokens"] == want.prompt_tokens  # the prompt is not changed
    chunks = list(plain.create_completion("def add(a, b):", suffix="\n# end", max_tokens=10, temperature=0,
                                          stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == want.text + "\n# end"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("spm", [False, True])
def test_suffix_with_fim_tokens_fills_the_middle(fim_path: str, spm: bool) -> None:
    with Llama(model_path=fim_path, n_ctx=256, verbose=False, spm_infill=spm) as llm:
        m = llm.model
        prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
        pre = m.tokenize(prefix, add_bos=False, special=False)
        out = llm.create_completion(prefix, suffix=suffix, max_tokens=12, temperature=0)
        n = out["usage"]["prompt_tokens"]
        bos = [llm.token_bos()]  # the fixture adds BOS
        sfx_len = n - len(bos) - len(pre) - 3
        # rebuild the prompt the way llama-cpp-python lays it out, and check the suffix tokens spell the suffix
        ids = m.context_tokens[:n]
        if spm:
            assert ids[:2] == bos + [SUF] and ids[2 + sfx_len:] == [PRE] + pre + [MID]
            sfx = ids[2:2 + sfx_len]
        else:
            assert ids[:2 + len(pre)] == bos + [PRE] + pre and ids[2 + len(pre)] == SUF and ids[-1] == MID
            sfx = ids[3 + len(pre):-1]
        # no SentencePiece dummy-prefix space in front of the suffix: its pieces are exactly its bytes
        assert b"".join(m.tokenizer.token_to_piece(t, special=False) for t in sfx) == suffix.encode()
        want = m.generate(ids, max_tokens=12, temperature=0)
        assert out["choices"][0]["text"] == want.text  # the middle, without the suffix appended


# ------------------------------------------------------------------ tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "days": {"type": "integer", "minimum": 1, "maximum": 9},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "days", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
    "additionalProperties": False}}}
# a template that shows its tools, like Qwen's or Llama 3.1's do
TOOLS_TEMPLATE = ("{% if tools %}<tools>{% for t in tools %}{{ t['function']['name'] }} {% endfor %}</tools>\n"
                  "{% endif %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}")
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCE = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def chat() -> Llama:
    with Llama(model_path=str(fixture_path(f"{LLAMA}.gguf")), n_ctx=256, verbose=False,
               chat_format=TOOLS_TEMPLATE) as m:
        yield m


def test_forced_tool_call_arguments_validate_in_50_seeded_samples(chat: Llama) -> None:
    schema = WEATHER["function"]["parameters"]
    for seed in range(50):
        out = chat.create_chat_completion(MESSAGES, tools=[WEATHER, CLOCK], tool_choice=FORCE, temperature=1.0,
                                          seed=seed, max_tokens=96)
        choice = out["choices"][0]
        assert choice["finish_reason"] == "tool_calls", (seed, choice)
        msg = choice["message"]
        assert msg["role"] == "assistant" and msg["content"] is None
        (call,) = msg["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        args = json.loads(call["function"]["arguments"])
        jsonschema.validate(args, schema)
        assert msg["function_call"] == call["function"]  # llama-cpp-python's legacy field


def test_tools_reach_the_template(chat: Llama) -> None:
    m = chat.model
    with_tools = m.chat_prompt(MESSAGES, template=TOOLS_TEMPLATE, tools=[WEATHER, CLOCK])
    without = m.chat_prompt(MESSAGES, template=TOOLS_TEMPLATE)
    assert len(with_tools) > len(without)
    assert "get_weather get_time" in m.detokenize(with_tools)
    out = chat.create_chat_completion(MESSAGES, tools=[WEATHER, CLOCK], tool_choice=FORCE, temperature=0,
                                      max_tokens=96)
    assert out["usage"]["prompt_tokens"] == len(with_tools)


@pytest.mark.parametrize("choice", ["auto", "none", None])
def test_auto_and_none_reply_in_content(chat: Llama, choice: Any) -> None:
    m = chat.model
    ids = m.chat_prompt(MESSAGES, template=TOOLS_TEMPLATE, tools=[WEATHER])
    want = m.generate(ids, max_tokens=12, temperature=0)
    out = chat.create_chat_completion(MESSAGES, tools=[WEATHER], tool_choice=choice, temperature=0, max_tokens=12)
    ch = out["choices"][0]
    assert ch["message"] == {"role": "assistant", "content": want.text}
    assert ch["finish_reason"] == want.finish_reason


def test_streamed_tool_call_equals_the_whole_one(chat: Llama) -> None:
    kw: dict[str, Any] = dict(tools=[WEATHER], tool_choice=FORCE, temperature=1.0, seed=4, max_tokens=96)
    whole = chat.create_chat_completion(MESSAGES, **kw)["choices"][0]["message"]["tool_calls"][0]
    chunks = list(chat.create_chat_completion(MESSAGES, stream=True, **kw))
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["tool_calls"][0]["function"]["name"] == "get_weather"
    assert first["tool_calls"][0]["id"].startswith("call_") and first["tool_calls"][0]["index"] == 0
    args = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[:-1])
    assert args == whole["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["choices"][0]["delta"] == {}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_legacy_functions_and_bad_tool_choices(chat: Llama) -> None:
    out = chat.create_chat_completion(MESSAGES, functions=[CLOCK["function"]], function_call={"name": "get_time"},
                                      temperature=0, max_tokens=64)
    call = out["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_time"
    jsonschema.validate(json.loads(call["arguments"]), CLOCK["function"]["parameters"])
    with pytest.raises(ValueError, match="not among the tools"):
        chat.create_chat_completion(MESSAGES, tools=[WEATHER], tool_choice={"type": "function",
                                                                            "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="required"):
        chat.create_chat_completion(MESSAGES, tools=[WEATHER], tool_choice="required")
    with pytest.raises(ValueError, match="name"):
        chat.create_chat_completion(MESSAGES, tools=[{"type": "function", "function": {"parameters": {}}}])
    with pytest.raises(ValueError, match="no tools"):
        chat.create_chat_completion(MESSAGES, tool_choice=FORCE)


def test_a_template_without_tools_is_warned_about(plain: Llama) -> None:
    with pytest.warns(UserWarning, match="does not use `tools`"):
        plain.create_chat_completion(MESSAGES, tools=[WEATHER], temperature=0, max_tokens=2)
    with warnings.catch_warnings():  # a forced call needs no template support: the grammar makes the call
        warnings.simplefilter("error")
        out = plain.create_chat_completion(MESSAGES, tools=[WEATHER], tool_choice=FORCE, temperature=0,
                                           max_tokens=96)
    assert out["choices"][0]["finish_reason"] == "tool_calls"
