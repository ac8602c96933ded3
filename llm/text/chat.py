"""Chat templates: render a conversation to a prompt string with the GGUF's Jinja template.

A chat template comes from the model file, so it is **untrusted input**. It is rendered in jinja2's
``ImmutableSandboxedEnvironment`` (no access to underscore attributes, to mutating methods of
lists/dicts, or to ``str.format`` escapes), hardened further here:

* every access to an unsafe attribute raises immediately (jinja2's sandbox would otherwise hand back
  an undefined value that renders as an empty string);
* ``*`` and ``**`` refuse to build huge strings/lists or numbers (memory exhaustion), and ``range``
  is capped by the sandbox.

Errors (all are ``tilellm.errors.UnsupportedError``, hence ``ValueError``):

* ``ChatTemplateSecurityError`` — the template tried something the sandbox forbids (jinja2's
  ``SecurityError`` is chained as ``__cause__``);
* ``ChatTemplateError`` — any other template failure: syntax error, ``raise_exception(...)`` called
  by the template (e.g. "roles must alternate"), a runtime error inside the template.

The template sees what Hugging Face's ``apply_chat_template`` provides: ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, any extra keyword arguments (``tools``,
``enable_thinking`` ...), the functions ``raise_exception(msg)`` and ``strftime_now(fmt)``, and a
``tojson`` filter that keeps non-ASCII text and does not HTML-escape. Blocks are trimmed
(``trim_blocks``, ``lstrip_blocks``) and ``{% break %}`` / ``{% continue %}`` are available.
"""
from __future__ import annotations

import json
import operator
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

from tilellm.quant.errors import UnsupportedError

__all__ = [
    "ChatTemplateError", "ChatTemplateSecurityError", "DEFAULT_CHAT_TEMPLATE", "get_chat_template",
    "render_chat",
]


class ChatTemplateError(UnsupportedError):
    """The chat template could not be rendered (syntax error, ``raise_exception``, runtime error)."""


class ChatTemplateSecurityError(ChatTemplateError):
    """The chat template attempted an operation the sandbox forbids; nothing unsafe was executed."""


#: Used when the GGUF has no ``tokenizer.chat_template``: the LLaMA-2 chat format
#: (``<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...``).
DEFAULT_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
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

_MAX_SEQ = 1 << 20        # longest string/list `*` may build
_MAX_POW_EXP = 1024       # largest exponent `**` accepts


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False,
            ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys,
                      ensure_ascii=ensure_ascii)


@lru_cache(maxsize=1)
def _environment():
    from jinja2.exceptions import SecurityError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} "
                                "object is not allowed in a chat template")

        def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
            if operator_name == "*":
                for seq, count in ((left, right), (right, left)):
                    if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
                        if len(seq) * max(count, 0) > _MAX_SEQ:
                            raise SecurityError("a chat template may not build a sequence this long")
                return operator.mul(left, right)
            if operator_name == "**":
                if isinstance(right, (int, float)) and abs(right) > _MAX_POW_EXP:
                    raise SecurityError("exponent too large in a chat template")
                return operator.pow(left, right)
            return super().call_binop(context, operator_name, left, right)

    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


@lru_cache(maxsize=32)
def _compile(template: str):
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        return _environment().from_string(template)
    except SecurityError as e:  # pragma: no cover - compile-time security errors are rare
        raise ChatTemplateSecurityError(str(e)) from e
    except TemplateError as e:
        raise ChatTemplateError(f"invalid chat template: {e}") from e


def get_chat_template(metadata: Mapping[str, Any], name: str | None = None) -> str:
    """The chat template of a GGUF: ``tokenizer.chat_template`` (or ``tokenizer.chat_template.<name>``).

    Falls back to ``DEFAULT_CHAT_TEMPLATE`` (LLaMA-2 format) when the file has none. A named template
    that does not exist raises ``ChatTemplateError``.
    """
    if name:
        key = f"tokenizer.chat_template.{name}"
        if key not in metadata:
            raise ChatTemplateError(f"the model has no chat template named {name!r}")
        return str(metadata[key])
    value = metadata.get("tokenizer.chat_template")
    return str(value) if value else DEFAULT_CHAT_TEMPLATE


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **kwargs: Any) -> str:
    """Render ``messages`` with a Jinja chat ``template`` in a hardened sandbox.

    Args:
        template: the Jinja source (see ``get_chat_template``).
        messages: ``[{"role": "system" | "user" | "assistant" | ..., "content": ...}, ...]``.
        add_generation_prompt: end with the header that starts the assistant's reply.
        bos_token, eos_token: the token texts the template may insert (e.g. ``"<s>"``). If the result
            starts with the BOS text, tokenize it with ``special=True`` and without adding another BOS.
        **kwargs: further template variables (``tools``, ``documents``, ``enable_thinking`` ...).

    Raises:
        ChatTemplateSecurityError: the template tried to escape the sandbox (nothing was executed).
        ChatTemplateError: syntax error, ``raise_exception`` from the template, or another render error.
        TypeError: ``messages`` is not a sequence of mappings.
    """
    from jinja2.exceptions import SecurityError, TemplateError

    if not isinstance(template, str):
        raise TypeError(f"template must be str, got {type(template).__name__}")
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} mappings")
    msgs = []
    for m in messages:
        if not isinstance(m, Mapping):
            raise TypeError(f"each message must be a mapping, got {type(m).__name__}")
        msgs.append(dict(m))
    compiled = _compile(template)
    variables: dict[str, Any] = {"tools": None, "documents": None}
    variables.update(kwargs)
    variables.update(messages=msgs, add_generation_prompt=bool(add_generation_prompt),
                     bos_token=bos_token, eos_token=eos_token)
    try:
        return compiled.render(**variables)
    except ChatTemplateError:
        raise
    except SecurityError as e:
        raise ChatTemplateSecurityError(f"chat template blocked by the sandbox: {e}") from e
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError,
            RecursionError) as e:
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e
