"""The HTTP routes (FastAPI): OpenAI's completions and chat completions, plus llama-server's extras.

Every route turns its request into token ids on the engine's thread (:meth:`Engine.call`), checks
the context budget up front, submits sequences to the :class:`~tilellm.llm.server.engine.Engine`
and answers from their events, as one JSON body or as server-sent events ending in ``data: [DONE]``.
A client that disconnects cancels its sequences.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Literal, Sequence, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tilellm.llm.text.chat_tools import ToolCall, resolve_tools, tool_call_delta

from .engine import (
    Completion,
    Engine,
    EngineClosedError,
    GenerationRequest,
    QueueFullError,
    RequestHandle,
    TokenEvent,
    TokenLogprobs,
)
from .errors import APIError, error_response, validation_message
from .metrics import Metrics
from .middleware import Guard
from .sampling import SamplingParams
from .schemas import (
    MAX_N,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    FunctionCallOut,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TokenizeRequest,
    TokenizeResponse,
    ToolCallOut,
    TopLogprob,
    UsageInfo,
)
from .sse import EventStream, sse_data

__all__ = ["create_app", "ServerSettings"]

ENDPOINTS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/tokenize",
                       "/detokenize", "/metrics"})
R = TypeVar("R", bound=BaseModel)
CLIENT_CLOSED = 499  # nginx's "client closed request": counted in /metrics, never seen by the client


@dataclass(frozen=True)
class ServerSettings:
    """What the routes need besides the engine."""

    model_id: str                 #: the name /v1/models and every response report
    api_key: str | None = None    #: required as ``Authorization: Bearer`` on every route but /health
    max_body: int = 8 << 20       #: request bodies larger than this get 413


def create_app(engine: Engine, settings: ServerSettings) -> Any:
    """The ASGI app serving ``engine`` (already started; the caller closes it)."""
    app = FastAPI(title="tilellm server", version="0.1.0", docs_url="/docs", redoc_url=None)
    metrics = Metrics()
    routes = _Routes(engine, settings)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail),
                              code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await routes.completions(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await routes.chat_completions(request)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> Any:
        meta: dict[str, int | str] = {"n_ctx": engine.n_ctx, "n_vocab": engine.n_vocab, "n_slots": engine.n_slots}
        try:
            meta["desc"] = await engine.call(lambda m: m.desc)
        except EngineClosedError:
            pass
        return ModelList(data=[ModelCard(id=settings.model_id, created=created, meta=meta)])

    @app.get("/health")
    async def health() -> Any:
        if not engine.alive:
            return error_response(503, "the engine is not running", type="server_error", code="unavailable")
        st = engine.stats()
        return {"status": "ok", "slots_idle": st.n_slots - st.busy_slots, "slots_processing": st.busy_slots}

    @app.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(request: Request) -> Any:
        req = await _parse(request, TokenizeRequest)
        add_bos = None if req.add_special else False
        ids = await _on_engine(engine, lambda m: m.tokenize(req.content, add_bos=add_bos, special=req.parse_special))
        return TokenizeResponse(tokens=ids)

    @app.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(request: Request) -> Any:
        req = await _parse(request, DetokenizeRequest)
        text = await _on_engine(engine, lambda m: m.detokenize(req.tokens))
        return DetokenizeResponse(content=text)

    @app.get("/metrics")
    async def prometheus() -> Any:
        return PlainTextResponse(metrics.render(engine.stats()), media_type="text/plain; version=0.0.4")

    return Guard(app, metrics=metrics, api_key=settings.api_key, max_body=settings.max_body, endpoints=ENDPOINTS)


# ----------------------------------------------------------------------------- helpers

async def _parse(request: Request, cls: type[R]) -> R:
    """The JSON body validated as ``cls``; APIError 400 for malformed JSON or invalid fields."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"malformed JSON body: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        message, param = validation_message(e)
        unknown = any(err.get("type") == "extra_forbidden" for err in e.errors())
        raise APIError(400, message, param=param, code="unknown_parameter" if unknown else "invalid_value") from None


T = TypeVar("T")


async def _on_engine(engine: Engine, fn: Callable[[Any], T]) -> T:
    """``fn(model)`` on the engine thread; ValueError (bad ids, template errors) becomes a 400."""
    try:
        return await engine.call(fn)
    except EngineClosedError as e:
        raise APIError(503, str(e), type="server_error", code="unavailable") from None
    except ValueError as e:
        raise APIError(400, str(e), code="invalid_value") from None


def _usage(prompt_tokens: int, completion_tokens: int, cached: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


async def _merge(handles: Sequence[RequestHandle]) -> AsyncIterator[tuple[int, TokenEvent]]:
    """Events of several sequences as they come, tagged with the sequence's index."""
    if len(handles) == 1:
        async for ev in handles[0]:
            yield 0, ev
        return
    q: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()

    async def pump(i: int, h: RequestHandle) -> None:
        async for ev in h:
            await q.put((i, ev))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, ev = await q.get()
            if ev.finish_reason is not None:
                left -= 1
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect_or_cancel(request: Request, handles: list[RequestHandle]) -> list[Completion] | None:
    """Every sequence's whole output, or None if the client disconnected first (they are cancelled)."""
    gather: asyncio.Future[list[Completion]] = asyncio.ensure_future(asyncio.gather(*(h.collect() for h in handles)))
    watch: asyncio.Future[Any] = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait([gather, watch], return_when=asyncio.FIRST_COMPLETED)
        if gather.done():
            return gather.result()
        for h in handles:
            h.cancel()
        await gather  # their final events come within one engine step
        return None
    finally:
        watch.cancel()
        if not gather.done():  # this task itself was cancelled (server shutdown)
            for h in handles:
                h.cancel()
            gather.cancel()
            gather.add_done_callback(lambda f: f.cancelled() or f.exception())


Finish = Literal["stop", "length", "tool_calls"]


def _check_failed(results: Sequence[Completion]) -> list[Finish]:
    """The finish reasons, once every sequence has ended normally; else the APIError."""
    for c in results:
        if c.finish_reason not in ("stop", "length"):
            raise APIError(503 if c.finish_reason == "cancelled" else 500,
                           c.error or f"generation ended: {c.finish_reason}", type="server_error")
    return [cast(Finish, c.finish_reason) for c in results]


def _sse(obj: Any) -> bytes:
    return sse_data(obj)


class _Shape:
    """What differs between the two generation routes: the id prefix, the object names, and how a sequence's
    output becomes a choice (whole, or streamed as chunk choices)."""

    prefix = ""
    chunk_object = ""

    def __init__(self, req: Any) -> None:
        self.req = req
        self.n_lp = req.n_logprobs

    def choice(self, i: int, c: Completion, finish: Finish) -> Any:
        raise NotImplementedError

    def response(self, rid: str, created: int, model: str, choices: list[Any], usage: UsageInfo) -> Any:
        raise NotImplementedError

    def opening(self, i: int) -> dict[str, Any] | None:
        """The choice fields of sequence i's first chunk, if it has one before any token."""
        return None

    def finish(self, reason: str | None) -> str | None:
        """The finish reason the API reports for the engine's ``reason``."""
        return reason

    def pieces(self, i: int, ev: TokenEvent, lps: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
        """The choice fields of the chunks one event gives (``lps``: log-probabilities not sent yet)."""
        raise NotImplementedError


class _CompletionShape(_Shape):
    prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, req: CompletionRequest, echoes: list[str], prompt_chars: list[int]) -> None:
        super().__init__(req)
        self.echoes = echoes
        self.offsets = [prompt_chars[i // req.n] for i in range(len(prompt_chars) * req.n)]

    def _lp(self, i: int, lps: Sequence[TokenLogprobs]) -> CompletionLogprobs | None:
        if self.n_lp is None:
            return None
        tokens = [t.token.decode("utf-8", "replace") for t in lps]
        offsets = []
        for t in tokens:  # text_offset counts from the start of the prompt, as OpenAI's does
            offsets.append(self.offsets[i])
            self.offsets[i] += len(t)
        return CompletionLogprobs(tokens=tokens, token_logprobs=[t.logprob for t in lps],
                                  top_logprobs=[{b.decode("utf-8", "replace"): v for b, v in t.top} for t in lps],
                                  text_offset=offsets)

    def choice(self, i: int, c: Completion, finish: Finish) -> CompletionChoice:
        return CompletionChoice(index=i, text=self.echoes[i // self.req.n] + c.text, finish_reason=finish,
                                logprobs=self._lp(i, c.logprobs))

    def response(self, rid: str, created: int, model: str, choices: list[Any], usage: UsageInfo) -> Any:
        return CompletionResponse(id=rid, created=created, model=model, choices=choices, usage=usage)

    def opening(self, i: int) -> dict[str, Any] | None:
        return {"text": self.echoes[i // self.req.n], "logprobs": None} if self.req.echo else None

    def pieces(self, i: int, ev: TokenEvent, lps: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
        if not (ev.text or ev.finish_reason):
            return []
        lp = self._lp(i, lps)
        return [{"text": ev.text, "logprobs": lp.model_dump() if lp is not None else None}]


def _chat_lp(lps: Sequence[TokenLogprobs]) -> ChatLogprobs:
    def top(b: bytes, v: float) -> TopLogprob:
        return TopLogprob(token=b.decode("utf-8", "replace"), logprob=v, bytes=list(b))

    return ChatLogprobs(content=[ChatTokenLogprob(**top(t.token, t.logprob).model_dump(),
                                                  top_logprobs=[top(b, v) for b, v in t.top]) for t in lps])


class _ChatShape(_Shape):
    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def __init__(self, req: ChatCompletionRequest, call: ToolCall | None = None) -> None:
        super().__init__(req)
        self.call = call                      # a forced function call: the output is its arguments
        self._calls: dict[int, ToolCall] = {}  # choice -> the call with its own id

    def _call(self, i: int) -> ToolCall:
        assert self.call is not None
        if i not in self._calls:
            self._calls[i] = self.call if i == 0 else replace(self.call, id=f"call_{uuid.uuid4().hex[:24]}")
        return self._calls[i]

    def finish(self, reason: str | None) -> str | None:
        # a complete call (its JSON closed) ends as OpenAI's "tool_calls"; a cut one stays "length"
        return "tool_calls" if self.call is not None and reason == "stop" else reason

    def choice(self, i: int, c: Completion, finish: Finish) -> ChatChoice:
        if self.call is None:
            message = ChatMessageOut(content=c.text)
        else:
            call = self._call(i)
            message = ChatMessageOut(content=None, tool_calls=[ToolCallOut(
                id=call.id, function=FunctionCallOut(name=call.name, arguments=c.text))])
        return ChatChoice(index=i, message=message, finish_reason=cast(Finish, self.finish(finish)),
                          logprobs=_chat_lp(c.logprobs) if self.n_lp is not None else None)

    def response(self, rid: str, created: int, model: str, choices: list[Any], usage: UsageInfo) -> Any:
        return ChatCompletionResponse(id=rid, created=created, model=model, choices=choices, usage=usage)

    def opening(self, i: int) -> dict[str, Any] | None:
        if self.call is not None:  # the role, the call's id and name, then its arguments piece by piece
            return {"delta": tool_call_delta(self._call(i), "", True), "logprobs": None}
        return {"delta": {"role": "assistant", "content": ""}, "logprobs": None}

    def pieces(self, i: int, ev: TokenEvent, lps: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
        lp = _chat_lp(lps).model_dump() if self.n_lp is not None and lps else None
        out = []
        if ev.text:
            delta = {"content": ev.text} if self.call is None else tool_call_delta(self._call(i), ev.text, False)
            out.append({"delta": delta, "logprobs": lp})
            lp = None
        if ev.finish_reason:
            out.append({"delta": {}, "logprobs": lp})  # log-probabilities of tokens that added no text (a stop)
        return out


class _Routes:
    """The two generation routes (they share tokenization, budget checks, submission and streaming)."""

    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings

    # -------------------------------------------------------------- shared steps
    def _budget(self, n_prompt: int, limit: int | None) -> int:
        n_ctx = self.engine.n_ctx
        if limit is None:
            if n_prompt >= n_ctx:
                raise APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, your "
                               f"prompt has {n_prompt} tokens, which leaves no room for a completion.",
                               code="context_length_exceeded", param="messages")
            return n_ctx - n_prompt
        if n_prompt + limit > n_ctx:
            raise APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                           f"{n_prompt + limit} tokens ({n_prompt} in the prompt, {limit} for the completion). "
                           "Please reduce the prompt or max_tokens.",
                           code="context_length_exceeded", param="max_tokens")
        return limit

    async def _processors(self, fmt: dict[str, Any] | None, count: int) -> list[Any]:
        """One structured-output constraint per sequence (each keeps its own grammar state), or Nones."""
        if fmt is None:
            return [None] * count

        def build(m: Any) -> list[Any]:
            from tilellm.llm.text.constrain import logits_processor

            return [logits_processor(m.tokenizer, response_format=fmt, n_vocab=m.n_vocab) for _ in range(count)]

        return await _on_engine(self.engine, build)

    async def _submit(self, prompts: list[list[int]], limit: int | None, req: Any,
                      fmt: dict[str, Any] | None = None) -> list[RequestHandle]:
        """One sequence per (prompt, choice), in OpenAI's order: index = prompt_index * n + choice; ``fmt``: the
        structured output every sequence must follow (default: the request's ``response_format``)."""
        if len(prompts) * req.n > MAX_N:
            raise APIError(400, f"at most {MAX_N} sequences per request (prompts x n)", param="n")
        bias = req.bias_pairs()
        bad = [t for t, _ in bias if t >= self.engine.n_vocab]
        if bad:
            raise APIError(400, f"logit_bias: token id {bad[0]} is out of range for a vocabulary of "
                           f"{self.engine.n_vocab}", code="invalid_value", param="logit_bias")
        budgets = []
        for ids in prompts:
            if not ids:
                raise APIError(400, "the prompt is empty", code="invalid_value", param="prompt")
            budgets.append(self._budget(len(ids), limit))
        procs = iter(await self._processors(fmt if fmt is not None else req.structured, len(prompts) * req.n))
        seqs = []
        for ids, budget in zip(prompts, budgets):
            for j in range(req.n):
                seed = None if req.seed is None else (req.seed + j) % (1 << 64)
                sp = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                                    min_p=req.min_p, seed=seed, presence_penalty=req.presence_penalty,
                                    frequency_penalty=req.frequency_penalty, logit_bias=bias)
                seqs.append(GenerationRequest(ids, budget, sp, tuple(req.stop or ()), logprobs=req.n_logprobs,
                                              logits_processor=next(procs)))
        try:
            return self.engine.submit_many(seqs)
        except QueueFullError as e:
            raise APIError(503, f"{e}; retry later", type="server_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except EngineClosedError as e:
            raise APIError(503, str(e), type="server_error", code="unavailable") from None
        except ValueError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    @staticmethod
    def _total_usage(prompts: list[list[int]], n: int, usages: list[Any]) -> UsageInfo:
        # like OpenAI: each prompt counted once, however many choices it has
        first = [usages[i * n] for i in range(len(prompts))]
        return _usage(sum(u.prompt_tokens for u in first), sum(u.completion_tokens for u in usages),
                      sum(u.cached_tokens for u in first))

    async def _respond(self, request: Request, req: Any, shape: _Shape, prompts: list[list[int]],
                       handles: list[RequestHandle]) -> Any:
        """The answer to a submitted request: one body, or server-sent events ending in ``[DONE]``."""
        rid, created, model = f"{shape.prefix}-{uuid.uuid4().hex}", int(time.time()), self.settings.model_id
        if not req.stream:
            results = await _collect_or_cancel(request, handles)
            if results is None:
                return Response(status_code=CLIENT_CLOSED)  # nobody is listening
            finish = _check_failed(results)
            choices = [shape.choice(i, c, finish[i]) for i, c in enumerate(results)]
            usage = self._total_usage(prompts, req.n, [c.usage for c in results])
            return shape.response(rid, created, model, choices, usage)

        head = {"id": rid, "object": shape.chunk_object, "created": created, "model": model}

        def chunk(index: int, fields: dict[str, Any], finish: str | None) -> dict[str, Any]:
            body: dict[str, Any] = {**head, "choices": [{"index": index, **fields, "finish_reason": finish}]}
            if req.include_usage:
                body["usage"] = None
            return body

        async def events() -> AsyncIterator[bytes]:
            usages: list[Any] = [None] * len(handles)
            held: list[list[TokenLogprobs]] = [[] for _ in handles]  # log-probabilities not sent yet
            try:
                for i in range(len(handles)):
                    first = shape.opening(i)
                    if first is not None:
                        yield _sse(chunk(i, first, None))
                async for i, ev in _merge(handles):
                    if ev.finish_reason in ("error", "cancelled"):
                        yield _sse({"error": {"message": ev.error or ev.finish_reason, "type": "server_error",
                                              "param": None, "code": None}})
                        return
                    held[i].extend(ev.logprobs)
                    out = shape.pieces(i, ev, held[i])
                    if out:
                        held[i] = []
                    for k, fields in enumerate(out):
                        yield _sse(chunk(i, fields, shape.finish(ev.finish_reason) if k == len(out) - 1 else None))
                    if ev.finish_reason:
                        usages[i] = ev.usage
                if req.include_usage:
                    usage = self._total_usage(prompts, req.n, usages)
                    yield _sse({**head, "choices": [], "usage": usage.model_dump()})
                yield sse_data("[DONE]")
            finally:
                for h in handles:
                    h.cancel()

        return EventStream(events(), ping=15)

    # -------------------------------------------------------------- /v1/completions
    async def completions(self, request: Request) -> Any:
        req = await _parse(request, CompletionRequest)
        texts = req.prompts()

        def tokenize_all(m: Any) -> list[list[int]]:
            return [m.tokenize(p, add_bos=None, special=True) if isinstance(p, str) else list(p) for p in texts]

        prompts = await _on_engine(self.engine, tokenize_all)
        echoes: list[str] = [""] * len(prompts)
        if req.echo or req.logprobs is not None:
            echoes = await _on_engine(self.engine, lambda m: [
                p if isinstance(p, str) else m.detokenize(p) for p in texts])
        shape = _CompletionShape(req, echoes if req.echo else [""] * len(prompts), [len(e) for e in echoes])
        handles = await self._submit(prompts, req.max_tokens, req)
        return await self._respond(request, req, shape, prompts, handles)

    # -------------------------------------------------------------- /v1/chat/completions
    async def chat_completions(self, request: Request) -> Any:
        req = await _parse(request, ChatCompletionRequest)
        try:  # tools go to the template (Hugging Face's `tools`); a named tool_choice forces that call
            tools, call = resolve_tools(req.tools, req.tool_choice, req.functions, req.function_call)
        except ValueError as e:
            raise APIError(400, str(e), code="invalid_value", param="tool_choice") from None
        messages = [m.as_template_message() for m in req.messages]
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        ids = await _on_engine(self.engine, lambda m: list(m.chat_prompt(messages, **extra)))
        # a forced call's reply is its arguments: a JSON object valid for the function's parameters
        handles = await self._submit([ids], req.token_limit, req, call.response_format if call is not None else None)
        return await self._respond(request, req, _ChatShape(req, call), [ids], handles)
