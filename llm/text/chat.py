"""Chat templates: render a conversation to a prompt string with the GGUF's Jinja template.

A chat template comes from the model file, so it is **untrusted input**. It is rendered in jinja2's
``ImmutableSandboxedEnvironment`` (no access to underscore attributes, to mutating methods of
lists/dicts, or to ``str.format`` escapes), hardened further here:

* every access to an unsafe attribute raises immediately (jinja2's sandbox would otherwise hand back
  an undefined value that renders as an empty string);
* it runs in a child process with a render budget (``template_worker``): at most ``RENDER_TIMEOUT``
  seconds, ~96 MB of memory beyond the child's start-up size (Linux), and ``max_chars`` characters of
  output, so loops, string-building methods, captured blocks and big integers cannot exhaust the
  parent's CPU or memory.

Errors (all are ``tilellm.errors.UnsupportedError``, hence ``ValueError``):

* ``ChatTemplateSecurityError`` — the template tried something the sandbox forbids (jinja2's
  ``SecurityError`` is chained as ``__cause__``);
* ``ChatTemplateLimitError`` — the template exceeded its render budget and was stopped;
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
from typing import Any, Mapping, Sequence

from tilellm.quant.errors import UnsupportedError

from .chat_formats import CHAT_FORMATS, detect_chat_format, format_template, warn_fallback_once
from .template_worker import TemplateRefused, TemplateWorker

__all__ = [
    "ChatTemplateError", "ChatTemplateLimitError", "ChatTemplateSecurityError", "DEFAULT_CHAT_TEMPLATE",
    "RENDER_TIMEOUT", "RENDER_MAX_CHARS", "builtin_template", "get_chat_template", "render_chat",
]

RENDER_TIMEOUT = 0.5         # seconds one render may take (real templates take about a millisecond)
RENDER_MAX_CHARS = 1 << 22   # characters a render may produce, unless the caller sets a tighter bound


class ChatTemplateError(UnsupportedError):
    """The chat template could not be rendered (syntax error, ``raise_exception``, runtime error)."""


class ChatTemplateSecurityError(ChatTemplateError):
    """The chat template attempted an operation the sandbox forbids; nothing unsafe was executed."""


#: The LLaMA-2 chat format (``<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>...``): the
#: last resort when a GGUF has no ``tokenizer.chat_template`` and nothing in it points at another format.
DEFAULT_CHAT_TEMPLATE = CHAT_FORMATS["llama-2"]

_worker = TemplateWorker()  # one child process renders every template of this process


class ChatTemplateLimitError(ChatTemplateError):
    """The chat template exceeded its render budget (time, memory or output size); it was stopped."""


def get_chat_template(metadata: Mapping[str, Any], name: str | None = None, *,
                      chat_format: str | None = None) -> str:
    """The chat template to render for a GGUF.

    * ``chat_format``: a built-in format by name (``gemma``, ``llama-3``, ``chatml`` ...; see
      ``chat_formats.chat_format_names()``), whatever the file carries; ``ValueError`` if unknown. A string
      holding Jinja tags (``{{`` / ``{%``) is taken as a template's source.
    * ``name``: the file's ``tokenizer.chat_template.<name>``; ``ChatTemplateError`` if it does not exist.
    * otherwise the file's ``tokenizer.chat_template``; if it has none, the built-in format detected from the
      vocabulary's special tokens and the architecture (``detect_chat_format``), announced once with a warning
      (LLaMA-2's format, ``DEFAULT_CHAT_TEMPLATE``, only when nothing points elsewhere).
    """
    if chat_format:
        if "{{" in chat_format or "{%" in chat_format:  # a Jinja template's source (--chat-template FILE)
            return chat_format
        return format_template(chat_format)
    if name:
        key = f"tokenizer.chat_template.{name}"
        if key not in metadata:
            raise ChatTemplateError(f"the model has no chat template named {name!r}")
        return str(metadata[key])
    value = metadata.get("tokenizer.chat_template")
    if value:
        return str(value)
    fmt, last_resort = detect_chat_format(metadata)
    how = "nothing in the file points at a format" if last_resort else "chosen from its tokens and architecture"
    warn_fallback_once(f"the model has no chat template; using the built-in {fmt!r} chat format ({how}); "
                       f"choose another with chat_format= / --chat-template")
    return CHAT_FORMATS[fmt]


def builtin_template(name: str) -> str:
    """The Jinja source of the built-in chat format ``name`` (``gemma``, ``llama-3``, ``chatml`` ...; a string holding
    Jinja tags is returned as it is); ``ValueError`` listing the names if unknown."""
    if "{{" in name or "{%" in name:
        return name
    return format_template(name)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", *, max_chars: int = RENDER_MAX_CHARS,
                timeout: float = RENDER_TIMEOUT, **kwargs: Any) -> str:
    """Render ``messages`` with a Jinja chat ``template`` in a hardened sandbox with a render budget.

    Args:
        template: the Jinja source (see ``get_chat_template``).
        messages: ``[{"role": "system" | "user" | "assistant" | ..., "content": ...}, ...]``.
        add_generation_prompt: end with the header that starts the assistant's reply.
        bos_token, eos_token: the token texts the template may insert (e.g. ``"<s>"``). If the result
            starts with the BOS text, tokenize it with ``special=True`` and without adding another BOS.
        max_chars: the longest output accepted (a caller that knows its context passes a bound from it, so a
            prompt that cannot fit is refused before it is tokenized).
        timeout: seconds the render may take.
        **kwargs: further template variables (``tools``, ``documents``, ``enable_thinking`` ...), JSON values.

    Raises:
        ChatTemplateSecurityError: the template tried to escape the sandbox (nothing was executed).
        ChatTemplateLimitError: the render took longer than ``timeout``, needed more than the worker's memory
            budget, or produced more than ``max_chars`` characters.
        ChatTemplateError: syntax error, ``raise_exception`` from the template, or another render error.
        TypeError: ``messages`` is not a sequence of mappings, or a variable is not a JSON value.
    """
    if not isinstance(template, str):
        raise TypeError(f"template must be str, got {type(template).__name__}")
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} mappings")
    msgs = []
    for m in messages:
        if not isinstance(m, Mapping):
            raise TypeError(f"each message must be a mapping, got {type(m).__name__}")
        msgs.append(dict(m))
    variables: dict[str, Any] = {"tools": None, "documents": None}
    variables.update(kwargs)
    variables.update(messages=msgs, add_generation_prompt=bool(add_generation_prompt),
                     bos_token=bos_token, eos_token=eos_token)
    try:
        encoded = json.dumps(variables, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"chat template variables must be JSON values (str, number, bool, None, list, dict): "
                        f"{e}") from e
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no valid text to render
        raise ValueError(f"chat messages must be valid Unicode text: a lone surrogate at position {e.start} "
                         "of the encoded conversation") from None
    try:
        return _worker.render(template, variables, timeout=timeout, max_chars=max_chars)
    except TemplateRefused as e:
        if e.kind == "security":  # the child's jinja2 SecurityError, rebuilt here as the documented cause
            from jinja2.exceptions import SecurityError

            raise ChatTemplateSecurityError(str(e)) from SecurityError(str(e))
        raise (ChatTemplateLimitError if e.kind == "limit" else ChatTemplateError)(str(e)) from None
