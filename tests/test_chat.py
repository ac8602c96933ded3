"""Chat template rendering (sandboxed jinja2) and its defences against template injection."""
from __future__ import annotations

import datetime
import os
import uuid

import pytest

from tilellm.errors import TileLLMError, UnsupportedError
from tilellm.llm.text.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplateError,
    ChatTemplateSecurityError,
    get_chat_template,
    render_chat,
)

MSGS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2? Answer in «French»."},
]

# Real-looking templates in the styles models ship (written for these tests).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

DEEPSEEK = (
    "{% set ns = namespace(system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<\uff5cUser\uff5c>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{ '<\uff5cAssistant\uff5c>' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<\uff5cAssistant\uff5c>' }}{% endif %}"
)

MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system is defined %}{{- '[INST] ' + system + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

TOOLS = (
    "{%- if tools %}<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools>\n{%- endif %}"
    "{%- for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}"
    "{%- if add_generation_prompt %}<assistant>{% endif %}"
)


def test_chatml_renders():
    out = render_chat(CHATML, MSGS)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in MSGS)
    assert out == expected + "<|im_start|>assistant\n"
    assert render_chat(CHATML, MSGS, add_generation_prompt=False) == expected


def test_llama3_style_renders_with_bos():
    out = render_chat(LLAMA3, MSGS, bos_token="<|begin_of_text|>")
    assert out.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>")
    assert out.count("<|eot_id|>") == len(MSGS)
    assert out.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "«French»" in out  # no HTML escaping of user text


def test_deepseek_style_namespace():
    out = render_chat(DEEPSEEK, MSGS, bos_token="<B>", eos_token="<E>")
    assert out == ("<B>You are terse.<\uff5cUser\uff5c>Hi there<\uff5cAssistant\uff5c>Hello.<E>"
                   "<\uff5cUser\uff5c>What is 2+2? Answer in «French».<\uff5cAssistant\uff5c>")


def test_mistral_raise_exception_is_chat_template_error():
    out = render_chat(MISTRAL, MSGS, bos_token="<s>", eos_token="</s>")
    assert out == ("<s>[INST] Hi there[/INST] Hello.</s>[INST] You are terse.\n\n"
                   "What is 2+2? Answer in «French».[/INST]")
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="alternate") as ei:
        render_chat(MISTRAL, bad)
    assert not isinstance(ei.value, ChatTemplateSecurityError)
    assert isinstance(ei.value, UnsupportedError) and isinstance(ei.value, ValueError)


def test_tools_tojson_and_extra_variables():
    tools = [{"name": "météo", "parameters": {"city": "<string>"}}]
    out = render_chat(TOOLS, MSGS[1:2], tools=tools, enable_thinking=False)
    assert '{"name": "météo", "parameters": {"city": "<string>"}}' in out  # non-ASCII kept, no \\u003c
    assert out.endswith("<user>Hi there</user><think></think><assistant>")
    plain = render_chat(TOOLS, MSGS[1:2])  # tools default to None; enable_thinking undefined
    assert "<tools>" not in plain and "<think>" not in plain


def test_strftime_now():
    out = render_chat("{{ strftime_now('%Y-%m-%d') }}", [])
    today = datetime.date.today()
    assert out in {today.isoformat(), (today - datetime.timedelta(days=1)).isoformat(),
                   (today + datetime.timedelta(days=1)).isoformat()}


def test_loop_controls_available():
    out = render_chat("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.role[0] }}{% endfor %}",
                      MSGS)
    assert out == "su"


def test_fallback_template_llama2():
    assert get_chat_template({}) == DEFAULT_CHAT_TEMPLATE
    assert get_chat_template({"tokenizer.chat_template": ""}) == DEFAULT_CHAT_TEMPLATE
    assert get_chat_template({"tokenizer.chat_template": CHATML}) == CHATML
    assert get_chat_template({"tokenizer.chat_template.tool_use": TOOLS}, name="tool_use") == TOOLS
    with pytest.raises(ChatTemplateError, match="rag"):
        get_chat_template({}, name="rag")
    out = render_chat(DEFAULT_CHAT_TEMPLATE, MSGS, bos_token="<s>", eos_token="</s>")
    assert out == ("<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s>"
                   "<s>[INST] What is 2+2? Answer in «French». [/INST]")
    assert render_chat(DEFAULT_CHAT_TEMPLATE, MSGS[1:2], bos_token="<s>") == "<s>[INST] Hi there [/INST]"
    with pytest.raises(ChatTemplateError, match="tool"):
        render_chat(DEFAULT_CHAT_TEMPLATE, [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}])


def test_bad_inputs():
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        render_chat("{% for %}", MSGS)
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages[10]['content'] + 1 }}", MSGS)
    with pytest.raises(TypeError):
        render_chat(CHATML, "hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        render_chat(CHATML, ["hello"])  # type: ignore[list-item]


# --------------------------------------------------------------------------- template injection
INJECTIONS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ joiner.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ namespace.__init__.__globals__['os'].system('touch {marker}') }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch {marker}') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}",
    "{{ lipsum.__globals__.__builtins__.__import__('subprocess').run(['touch', '{marker}']) }}",
    "{{ raise_exception.__globals__['os'].system('touch {marker}') }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{{ (messages|attr('__class__')).__mro__ }}",
    "{{ ''|attr('__class__') }}",
    "{% set x = ''['__class__'] %}{{ x }}",
    "{{ '{0.__class__.__mro__}'.format(1) }}",
    "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "{{ messages.append({'role': 'user'}) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ messages.__len__() }}",
    "{{ dict.__init__ }}",
    "{{ (lipsum|attr('__globals__')).os.system('touch {marker}') }}",
    "{{ 'x' * 100000000 }}",
    "{{ [0] * 100000000 }}",
    "{{ 9 ** 99999999 }}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_blocked(payload, tmp_path):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    template = payload.replace("{marker}", str(marker))
    with pytest.raises(ChatTemplateSecurityError) as ei:
        render_chat(template, [dict(m) for m in MSGS])
    assert isinstance(ei.value, (UnsupportedError, TileLLMError))
    assert not marker.exists()


def test_messages_not_mutated_by_template():
    msgs = [dict(m) for m in MSGS]
    with pytest.raises(ChatTemplateSecurityError):
        render_chat("{% set _ = messages.pop() %}", msgs)
    assert msgs == MSGS


def test_huge_range_refused():
    with pytest.raises(ChatTemplateError):
        render_chat("{% for i in range(10**9) %}{% endfor %}", [])


def test_security_error_chains_jinja_error():
    from jinja2.exceptions import SecurityError
    with pytest.raises(ChatTemplateSecurityError) as ei:
        render_chat("{{ ''.__class__ }}", [])
    assert isinstance(ei.value.__cause__, SecurityError)
    assert not os.path.exists("/tmp/pwned")
