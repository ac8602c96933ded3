"""Model.chat / chat_prompt and `llm-run --chat`: the GGUF's template, BOS handling, the sandbox."""
import io

import pytest
from conftest import fixture_path

import tilellm
from tilellm.llm.cli.run import main
from tilellm.llm.text.chat import ChatTemplateSecurityError

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def model():
    m = tilellm.load(fixture_path("llama2-micro-q8_0.gguf"), n_ctx=256, backend="reference")
    yield m
    m.close()


def test_fallback_template_adds_bos_once(model):
    assert "tokenizer.chat_template" not in model.metadata  # the fixture has none: LLaMA-2 format
    ids = model.chat_prompt(MSGS)
    bos = model.tokenizer.bos_id
    assert ids[0] == bos and bos not in ids[1:]
    assert model.detokenize(ids) == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello there [/INST]"


def test_file_template_with_bos_and_control_tokens(model, monkeypatch):
    tpl = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
           "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    monkeypatch.setitem(model.metadata, "tokenizer.chat_template", tpl)
    ids = model.chat_prompt(MSGS)
    tok = model.tokenizer
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]  # the template wrote BOS: not added again
    assert ids.count(tok.eos_id) == 2  # the EOS text became the EOS id, once per message
    no_gen = model.chat_prompt(MSGS, add_generation_prompt=False)
    assert len(no_gen) < len(ids)


def test_chat_equals_generate_on_the_rendered_prompt(model):
    a = model.chat(MSGS, max_tokens=6, temperature=0)
    b = model.generate(model.chat_prompt(MSGS), max_tokens=6, temperature=0)
    assert a.tokens == b.tokens and a.text == b.text


def test_malicious_template_is_refused(model, monkeypatch):
    monkeypatch.setitem(model.metadata, "tokenizer.chat_template",
                        "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateSecurityError):
        model.chat(MSGS, max_tokens=2)


def test_cli_chat_and_system_prompt(model):
    out, err = io.StringIO(), io.StringIO()
    rc = main([str(fixture_path("llama2-micro-q8_0.gguf")), "-p", "Hello there", "-sys", "Be brief.", "-n", "6",
               "--temp", "0", "-c", "256", "--backend", "reference"], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    want = model.chat(MSGS, max_tokens=6, temperature=0).text
    assert out.getvalue() == want + "\n"  # the rendered template is not echoed
