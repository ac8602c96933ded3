"""Tools (function calling) in chat completions, the way llama-cpp-python's generic chat formats do it.

* The chat template is rendered with ``tools`` (Hugging Face's variable), so a template that describes tools to its
  model (Qwen 2.5, Llama 3.1, Mistral ...) does; one that never mentions ``tools`` cannot show them.
* ``tool_choice={"type": "function", "function": {"name": N}}`` forces a call of N: the reply is constrained to a
  JSON object valid for N's ``parameters`` schema (structured output) and returned as ``message.tool_calls`` with
  ``finish_reason: "tool_calls"``.
* ``tool_choice="auto"`` (the default when tools are given) or ``"none"``: an ordinary reply (``content``), the
  model having seen the tools through its template.

The legacy ``functions`` / ``function_call`` arguments map onto ``tools`` / ``tool_choice``.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["ToolCall", "resolve_tools", "template_uses_tools", "tool_call_message", "tool_call_delta"]

_TOOLS_VAR = re.compile(r"\btools\b")


@dataclass(frozen=True)
class ToolCall:
    """The function a reply must call: its name and the JSON schema of its arguments."""

    name: str
    parameters: Mapping[str, Any]
    id: str

    @property
    def response_format(self) -> dict[str, Any]:
        """The structured-output request that makes the reply this function's arguments."""
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": dict(self.parameters)}}


def _check_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise ValueError("tools must be a list of {'type': 'function', 'function': {'name', 'parameters'}} dicts")
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(t, Mapping) or t.get("type", "function") != "function" or not isinstance(fn, Mapping):
            raise ValueError(f"each tool must be {{'type': 'function', 'function': {{...}}}}, got {t!r}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tool's function needs a non-empty name, got {name!r}")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping):
            raise ValueError(f"the parameters of tool {name!r} must be a JSON schema object")
        out.append({"type": "function", "function": dict(fn)})
    return out


def resolve_tools(tools: Any = None, tool_choice: Any = None, functions: Any = None,
                  function_call: Any = None) -> tuple[list[dict[str, Any]] | None, ToolCall | None]:
    """The tools to render the template with, and the call the reply must make (None: a free reply).

    ValueError for malformed tools, an unknown tool name, or a ``tool_choice`` other than ``"none"``, ``"auto"``
    and ``{"type": "function", "function": {"name": ...}}``; ``"required"`` is refused the same way (the generic
    formats cannot choose among several tools).
    """
    if functions is not None:
        if tools is not None:
            raise ValueError("give tools or functions, not both")
        if not isinstance(functions, Sequence) or isinstance(functions, (str, bytes)):
            raise ValueError("functions must be a list of {'name', 'parameters'} dicts")
        tools = [{"type": "function", "function": f} for f in functions]
        if tool_choice is None and function_call is not None:
            tool_choice = ({"type": "function", "function": function_call} if isinstance(function_call, Mapping)
                           else function_call)
    if tools is None:
        if tool_choice not in (None, "none", "auto"):
            raise ValueError("tool_choice names a function, but no tools were given")
        return None, None
    checked = _check_tools(tools)
    if tool_choice is None or tool_choice in ("none", "auto"):
        return checked or None, None
    if tool_choice == "required":
        raise ValueError("tool_choice='required' is not supported; name the function: "
                         "{'type': 'function', 'function': {'name': ...}}")
    fn = tool_choice.get("function") if isinstance(tool_choice, Mapping) else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        raise ValueError(f"tool_choice must be 'none', 'auto' or {{'type': 'function', 'function': {{'name': ...}}}}, "
                         f"got {tool_choice!r}")
    for t in checked:
        if t["function"]["name"] == name:
            params = t["function"].get("parameters") or {"type": "object", "properties": {}}
            return checked, ToolCall(name, params, f"call_{uuid.uuid4().hex[:24]}")
    raise ValueError(f"tool_choice names {name!r}, which is not among the tools "
                     f"({', '.join(t['function']['name'] for t in checked)})")


def template_uses_tools(source: str) -> bool:
    """Whether a chat template's Jinja source reads the ``tools`` variable."""
    return bool(_TOOLS_VAR.search(source))


def tool_call_message(call: ToolCall, arguments: str) -> dict[str, Any]:
    """The assistant message of a forced call (llama-cpp-python also fills the legacy ``function_call``)."""
    function = {"name": call.name, "arguments": arguments}
    return {"role": "assistant", "content": None, "function_call": function,
            "tool_calls": [{"id": call.id, "type": "function", "function": dict(function)}]}


def tool_call_delta(call: ToolCall, text: str, first: bool) -> dict[str, Any]:
    """A streamed delta carrying argument text; the first one also has the role, the call id and the name."""
    if first:
        return {"role": "assistant", "content": None,
                "tool_calls": [{"index": 0, "id": call.id, "type": "function",
                                "function": {"name": call.name, "arguments": text}}]}
    return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}
