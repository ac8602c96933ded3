"""Request and response bodies (pydantic), in OpenAI's shapes.

Requests forbid unknown fields (HTTP 400 naming the field). Fields of OpenAI's API that we accept but
do not implement are allowed only at their neutral value (``best_of: 1``, ``suffix: null`` ...), so a client
that sends defaults works and one that relies on them is told. ``tools`` / ``tool_choice`` (and the legacy
``functions`` / ``function_call``) are checked by ``tilellm.llm.text.chat_tools.resolve_tools`` in the route.
``top_k`` and ``min_p`` are extensions (llama-server has them too), and so is ``response_format`` on
/v1/completions. Unset sampling fields take ``Model.generate``'s defaults (temperature 0.8, top_k 40, top_p 0.95,
min_p 0.05), as llama-server does.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

__all__ = [
    "CompletionRequest", "ChatCompletionRequest", "ChatMessage", "TokenizeRequest", "DetokenizeRequest",
    "StreamOptions", "UsageInfo", "CompletionResponse", "CompletionChoice", "ChatCompletionResponse",
    "ChatChoice", "ChatMessageOut", "ChatCompletionChunk", "ChatChunkChoice", "ChatDelta",
    "ModelCard", "ModelList", "TokenizeResponse", "DetokenizeResponse", "ErrorBody", "ErrorDetail", "ResponseFormat",
    "CompletionLogprobs", "ChatLogprobs", "ChatTokenLogprob", "TopLogprob", "ToolCallOut", "FunctionCallOut",
]

MAX_STOPS = 16
MAX_STOP_CHARS = 1024
MAX_N = 16
MAX_LOGPROBS = 20     # alternatives per token (OpenAI: 5 for completions, 20 for chat)
MAX_LOGIT_BIAS = 1024  # entries of logit_bias (OpenAI: 300)
MAX_TOOLS = 128        # tools of a request (OpenAI: 128)

# a JSON number (int or float), not a numeric string or a boolean
Number = Annotated[float, Strict()]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        # clients send "temperature": null etc. to mean "the default" (OpenAI accepts it)
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class StreamOptions(_Request):
    include_usage: StrictBool = False


class JsonSchemaSpec(_Request):
    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Request):
    """``{"type": "text" | "json_object" | "json_schema"}``; ``json_schema: {"name", "schema", "strict"}``
    (OpenAI), or ``schema`` beside ``json_object`` (llama-cpp-python's spelling)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    @model_validator(mode="after")
    def _needs_schema(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format json_schema needs json_schema.schema")
        return self

    def as_dict(self) -> dict[str, Any] | None:
        """The form the structured-output module takes; None for plain text."""
        if self.type == "text":
            return None
        if self.type == "json_schema":
            assert self.json_schema is not None
            return {"type": "json_schema", "json_schema": {"schema": self.json_schema.schema_}}
        return {"type": "json_object", **({"schema": self.schema_} if self.schema_ is not None else {})}


class _Sampling(_Request):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: StrictStr | None = None   # informational: the server's model is fixed at start
    # unset sampling fields take generate()'s (and llama-server's) defaults, not OpenAI's 1.0 / 1.0: with
    # no top-k, every token sorts the whole vocabulary (~50 ms for Gemma 3's 262k tokens)
    temperature: Number = Field(0.8, ge=0.0, le=2.0)
    top_p: Number = Field(0.95, ge=0.0, le=1.0)
    top_k: StrictInt = Field(40, ge=0)
    min_p: Number = Field(0.05, ge=0.0, le=1.0)
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Number = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: Number = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Number] | None = None
    response_format: ResponseFormat | None = None
    user: StrictStr | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else list(v)
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return [s for s in stops if s]

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if not v:
            return None
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias may have at most {MAX_LOGIT_BIAS} entries")
        for k, b in v.items():
            if not k.isascii() or not k.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
            if not -100.0 <= b <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {b}")
        return v

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as sorted ``(token id, bias)`` pairs."""
        return tuple(sorted((int(k), float(b)) for k, b in (self.logit_bias or {}).items()))

    @property
    def structured(self) -> dict[str, Any] | None:
        """The response format for the structured-output module (None: plain text)."""
        return self.response_format.as_dict() if self.response_format is not None else None

    @property
    def n_logprobs(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else None."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(16, ge=1)
    echo: StrictBool = False
    suffix: None = None
    best_of: Literal[1] | None = None
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _echo_logprobs(self) -> "CompletionRequest":
        if self.echo and self.logprobs is not None:
            raise ValueError("logprobs with echo (the prompt's log-probabilities) is not supported")
        return self

    @property
    def n_logprobs(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("the prompt list is empty")
        if isinstance(v, list) and len(v) > MAX_N and not isinstance(v[0], int):
            raise ValueError(f"at most {MAX_N} prompts per request")
        return v

    def prompts(self) -> list[str | list[int]]:
        """The prompts: one string, several strings, one token list or several token lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [list(p)]
        return list(p)


class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


class FunctionCallIn(_Request):
    name: StrictStr
    arguments: StrictStr


class ToolCallIn(_Request):
    """A call an earlier assistant turn made (sent back by the client with the conversation)."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=MAX_TOOLS)  # an assistant turn's calls
    tool_call_id: StrictStr | None = None                                   # a tool result's call
    function_call: FunctionCallIn | None = None                             # legacy spelling of tool_calls

    def as_template_message(self) -> dict[str, Any]:
        """The message as the chat template sees it (``developer`` is OpenAI's new name for ``system``); tool
        calls and results keep their fields (Hugging Face's message format)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.name is not None:
            out["name"] = self.name
        calls = list(self.tool_calls or [])
        if self.function_call is not None:
            calls.append(ToolCallIn(id="call_0", function=self.function_call))
        if calls:
            out["tool_calls"] = [c.model_dump() for c in calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # checked (names, schemas, the choice) by chat_tools.resolve_tools in the route
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None   # one call per reply at most: true and false both hold
    functions: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)   # legacy tools
    function_call: StrictStr | dict[str, Any] | None = None                        # legacy tool_choice

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def n_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (OpenAI's current name) or ``max_tokens``; None: up to the context."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeRequest(_Request):
    """POST /tokenize (llama-server's fields)."""

    content: StrictStr
    add_special: StrictBool = False
    parse_special: StrictBool = True


class DetokenizeRequest(_Request):
    """POST /detokenize."""

    tokens: list[StrictInt]


# ----------------------------------------------------------------------------- responses

class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


Finish = Literal["stop", "length", "tool_calls"]


class CompletionLogprobs(BaseModel):
    """/v1/completions ``logprobs``: per generated token its text, log-probability, alternatives and offset."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """/v1/chat/completions ``logprobs``: ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``."""

    content: list[ChatTokenLogprob] | None = None


class _Choice(BaseModel):
    index: int
    finish_reason: Finish | None = None


class CompletionChoice(_Choice):
    text: str
    logprobs: CompletionLogprobs | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(_Choice):
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Choice):
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None


class _Response(BaseModel):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tilellm"
    meta: dict[str, Union[int, str]] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    content: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
