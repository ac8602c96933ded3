"""Built-in chat formats (llm/text/chat_formats.py): detection for GGUFs without a template, chat_format=."""
from __future__ import annotations

import warnings

import pytest
from conftest import fixture_path

from tilellm import load
from tilellm.llm.text import chat_formats
from tilellm.llm.text.chat import DEFAULT_CHAT_TEMPLATE, get_chat_template, render_chat
from tilellm.llm.text.chat_formats import CHAT_FORMATS, chat_format_names, detect_chat_format, format_template

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]


def _md(tokens, arch="llama"):
    return {"general.architecture": arch, "tokenizer.ggml.tokens": list(tokens)}


@pytest.mark.parametrize("tokens,arch,want", [
    (["<bos>", "<start_of_turn>", "<end_of_turn>"], "gemma3", "gemma"),
    (["a", "b"], "gemma3", "gemma"),
    (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "llama", "llama-3"),
    (["<|im_start|>", "<|im_end|>"], "qwen2", "chatml"),
    (["a"], "qwen2", "chatml"),
    (["<|user|>", "<|assistant|>", "<|end|>"], "phi3", "phi-3"),
    (["<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>"], "deepseek2", "deepseek-3"),
    (["a"], "deepseek2", "deepseek"),
    (["[INST]", "[/INST]"], "llama", "mistral"),
    (["<s>", "</s>"], "llama", "llama-2"),
])
def test_detection_by_tokens_then_architecture(tokens, arch, want) -> None:
    assert detect_chat_format(_md(tokens, arch)) == (want, False)


def test_last_resort_is_llama2_and_warns_once() -> None:
    assert detect_chat_format({}) == ("llama-2", True)
    chat_formats._warned.clear()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert get_chat_template({}) == DEFAULT_CHAT_TEMPLATE
        assert get_chat_template({}) == DEFAULT_CHAT_TEMPLATE
    msgs = [str(x.message) for x in w if "no chat template" in str(x.message)]
    assert len(msgs) == 1 and "'llama-2'" in msgs[0] and "nothing in the file" in msgs[0]


def test_file_template_wins_and_chat_format_overrides_it() -> None:
    md = {"tokenizer.chat_template": "{{ 'X' }}", **_md(["<start_of_turn>", "<end_of_turn>"])}
    assert get_chat_template(md) == "{{ 'X' }}"
    assert get_chat_template(md, chat_format="chatml") == CHAT_FORMATS["chatml"]
    assert get_chat_template(md, chat_format="{{ 'Y' }}") == "{{ 'Y' }}"  # a template's source
    with pytest.raises(ValueError, match="unknown chat format 'nope'.*gemma"):
        get_chat_template(md, chat_format="nope")
    assert "gemma" in chat_format_names() and format_template("ChatML") == CHAT_FORMATS["chatml"]


def test_each_format_renders_its_markers() -> None:
    expect = {
        "gemma": ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                  "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"),
        "llama-3": ("<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
                    "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant"
                    "<|end_header_id|>\n\n"),
        "chatml": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                   "Hello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"),
        "phi-3": ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\n2+2?"
                  "<|end|>\n<|assistant|>\n"),
        "mistral": "<bos>[INST] Be brief.\n\nHi[/INST] Hello.<eos>[INST] 2+2?[/INST]",
        "deepseek": "<bos>Be brief.\n\nUser: Hi\n\nAssistant: Hello.<eos>User: 2+2?\n\nAssistant:",
        "deepseek-3": "<bos>Be brief.<\uff5cUser\uff5c>Hi<\uff5cAssistant\uff5c>Hello.<eos><\uff5cUser\uff5c>2+2?"
                      "<\uff5cAssistant\uff5c>",
        "llama-2": "<bos>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. <eos><bos>[INST] 2+2? [/INST]",
        "zephyr": ("<|system|>\nBe brief.<eos>\n<|user|>\nHi<eos>\n<|assistant|>\nHello.<eos>\n<|user|>\n2+2?<eos>\n"
                   "<|assistant|>\n"),
        "vicuna": "Be brief.\n\nUSER: Hi\nASSISTANT: Hello.<eos>\nUSER: 2+2?\nASSISTANT:",
    }
    for name, want in expect.items():
        got = render_chat(CHAT_FORMATS[name], MSGS, bos_token="<bos>", eos_token="<eos>")
        assert got == want, name
    assert set(expect) | {"llama2", "llama3", "qwen", "phi3", "mistral-instruct", "deepseek3"} == set(CHAT_FORMATS)


def test_gemma_without_a_template_gets_gemma_not_inst() -> None:
    """The embedded Gemma 3 270M has no template: its chat prompt is the gemma format."""
    from tilellm.llm.cli.default_model import default_model_path

    try:
        path = default_model_path()
    except Exception as e:  # noqa: BLE001 - the 'demo' extra is optional
        pytest.skip(f"embedded model not installed: {e}")
    with load(path, n_ctx=128) as m:
        assert not m.metadata.get("tokenizer.chat_template")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids = m.chat_prompt([{"role": "user", "content": "Hi"}])
        text = m.detokenize(ids, special=True)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert "[INST]" not in text


def test_chat_format_keyword_on_a_fixture_model() -> None:
    with load(fixture_path("qwen2-micro-q8_0.gguf"), n_ctx=128) as m:
        msgs = [{"role": "user", "content": "Hi"}]
        ids = m.chat_prompt(msgs, chat_format="chatml")
        assert m.detokenize(ids, special=True).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        llama2 = m.chat_prompt(msgs, chat_format="llama-2")
        assert "[INST] Hi [/INST]" in m.detokenize(llama2, special=True)
        r = m.chat(msgs, chat_format="chatml", max_tokens=3, temperature=0)
        assert r.completion_tokens <= 3
        with pytest.raises(ValueError, match="unknown chat format"):
            m.chat_prompt(msgs, chat_format="klingon")


def test_llama_chat_format_uses_the_builtin_format() -> None:
    from tilellm import Llama

    path = str(fixture_path("qwen2-micro-q8_0.gguf"))
    llm = Llama(model_path=path, n_ctx=128, chat_format="chatml", verbose=False)
    msgs = [{"role": "user", "content": "Hi"}]
    out = llm.create_chat_completion(messages=msgs, max_tokens=4, temperature=0)
    with load(path, n_ctx=128) as m:
        want = m.chat(msgs, chat_format="chatml", max_tokens=4, temperature=0)
        other = m.chat(msgs, chat_format="llama-2", max_tokens=4, temperature=0)
    assert out["choices"][0]["message"]["content"] == want.text
    assert out["usage"]["prompt_tokens"] == want.prompt_tokens != other.prompt_tokens
