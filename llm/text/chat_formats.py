"""Built-in chat formats, and the choice of one for a GGUF that carries no ``tokenizer.chat_template``.

Each format is a small Jinja template rendered by the same sandboxed worker as a file's own template
(``chat.render_chat``), so there is one rendering path. When a file has no template, the format is detected
the way llama.cpp guesses one: from the special tokens of the vocabulary (``<start_of_turn>`` means gemma,
``<|start_header_id|>`` llama-3, ``<|im_start|>`` chatml ...) and then the architecture; LLaMA-2's
``[INST]`` is only the last resort, and using it is announced once with a warning.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

__all__ = ["CHAT_FORMATS", "chat_format_names", "detect_chat_format", "format_template", "warn_fallback_once"]

# The system message, when the format has no system role, is folded into the first user turn.
_SPLIT_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
)

_LLAMA2 = _SPLIT_SYSTEM + (
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- set sys = '<<SYS>>\\n' ~ system ~ '\\n<</SYS>>\\n\\n' if loop.first and system else '' -%}"
    "{{ bos_token ~ '[INST] ' ~ sys ~ (m['content'] | trim) ~ ' [/INST]' }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ ' ' ~ (m['content'] | trim) ~ ' ' ~ eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('the llama-2 chat format has no role ' ~ m['role'] ~ ' after the first message') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_GEMMA = "{{ bos_token }}" + _SPLIT_SYSTEM + (
    "{%- for m in turns -%}"
    "{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
    "{%- set text = (system ~ '\\n\\n' if loop.first and system else '') ~ (m['content'] | trim) -%}"
    "{{ '<start_of_turn>' ~ role ~ '\\n' ~ text ~ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

_LLAMA3 = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' ~ m['role'] ~ '<|end_header_id|>\\n\\n' ~ (m['content'] | trim) ~ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

_CHATML = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_PHI3 = (
    "{%- for m in messages -%}"
    "{{ '<|' ~ m['role'] ~ '|>\\n' ~ m['content'] ~ '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

_MISTRAL = "{{ bos_token }}" + _SPLIT_SYSTEM + (
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- set sys = system ~ '\\n\\n' if loop.first and system else '' -%}"
    "{{ '[INST] ' ~ sys ~ (m['content'] | trim) ~ '[/INST]' }}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{ ' ' ~ (m['content'] | trim) ~ eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('the mistral chat format has no role ' ~ m['role'] ~ ' after the first message') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# DeepSeek LLM / Coder chat: plain "User:" / "Assistant:" turns.
_DEEPSEEK = "{{ bos_token }}" + _SPLIT_SYSTEM + (
    "{%- if system -%}{{ system ~ '\\n\\n' }}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}{{ 'User: ' ~ m['content'] ~ '\\n\\n' }}"
    "{%- else -%}{{ 'Assistant: ' ~ m['content'] ~ eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

# DeepSeek V3 / R1: full-width bar markers.
_DEEPSEEK3 = "{{ bos_token }}" + _SPLIT_SYSTEM + (
    "{{ system }}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}{{ '<\uff5cUser\uff5c>' ~ m['content'] }}"
    "{%- else -%}{{ '<\uff5cAssistant\uff5c>' ~ m['content'] ~ eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<\uff5cAssistant\uff5c>' }}{%- endif -%}"
)

_ZEPHYR = (
    "{%- for m in messages -%}"
    "{{ '<|' ~ m['role'] ~ '|>\\n' ~ m['content'] ~ eos_token ~ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

_VICUNA = _SPLIT_SYSTEM + (
    "{%- if system -%}{{ system ~ '\\n\\n' }}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}{{ 'USER: ' ~ m['content'] ~ '\\n' }}"
    "{%- else -%}{{ 'ASSISTANT: ' ~ m['content'] ~ eos_token ~ '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

#: name -> Jinja template. Aliases follow llama.cpp / llama-cpp-python names.
CHAT_FORMATS: dict[str, str] = {
    "llama-2": _LLAMA2, "llama2": _LLAMA2,
    "llama-3": _LLAMA3, "llama3": _LLAMA3,
    "gemma": _GEMMA,
    "chatml": _CHATML, "qwen": _CHATML,
    "phi-3": _PHI3, "phi3": _PHI3,
    "mistral": _MISTRAL, "mistral-instruct": _MISTRAL,
    "deepseek": _DEEPSEEK,
    "deepseek-3": _DEEPSEEK3, "deepseek3": _DEEPSEEK3,
    "zephyr": _ZEPHYR,
    "vicuna": _VICUNA,
}


def chat_format_names() -> list[str]:
    """The names ``chat_format=`` accepts (aliases included), sorted."""
    return sorted(CHAT_FORMATS)


def format_template(name: str) -> str:
    """The Jinja template of the built-in format ``name``; ``ValueError`` listing the names if unknown."""
    key = str(name).strip().lower()
    if key not in CHAT_FORMATS:
        raise ValueError(f"unknown chat format {name!r}; built-in formats: {', '.join(chat_format_names())}")
    return CHAT_FORMATS[key]


# (special token texts that must all be in the vocabulary, format), most specific first
_TOKEN_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<start_of_turn>", "<end_of_turn>"), "gemma"),
    (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "llama-3"),
    (("<|im_start|>", "<|im_end|>"), "chatml"),
    (("<|user|>", "<|assistant|>", "<|end|>"), "phi-3"),
    (("<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>"), "deepseek-3"),
    (("[INST]", "[/INST]"), "mistral"),
)

# architecture prefix -> format, when the vocabulary has no telling tokens
_ARCH_RULES: tuple[tuple[str, str], ...] = (
    ("gemma", "gemma"), ("qwen", "chatml"), ("phi3", "phi-3"), ("deepseek", "deepseek"),
    ("llama", "llama-2"),
)


def detect_chat_format(metadata: Mapping[str, Any]) -> tuple[str, bool]:
    """The built-in format for a GGUF without a chat template: ``(name, is_fallback)``.

    Looks at the vocabulary's special tokens first, then ``general.architecture``. ``is_fallback`` is True when
    nothing pointed at a format and LLaMA-2's was taken as a last resort.
    """
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab: set[str] = set()
    if tokens is not None:
        try:
            vocab = {str(t) for t in tokens}
        except TypeError:
            vocab = set()
    for needed, name in _TOKEN_RULES:
        if all(t in vocab for t in needed):
            return name, False
    arch = str(metadata.get("general.architecture") or "").lower()
    for prefix, name in _ARCH_RULES:
        if arch.startswith(prefix):
            return name, False
    return "llama-2", True


_warned: set[str] = set()


def warn_fallback_once(what: str) -> None:
    """Warn (once per distinct message in this process) that a built-in chat format stands in for the file's."""
    if what in _warned:
        return
    _warned.add(what)
    warnings.warn(what, UserWarning, stacklevel=3)
