"""The user-facing API: ``tilellm.load(path) -> Model`` and ``Model.generate``.

Names and defaults follow llama-cpp-python (``max_tokens=16, temperature=0.8, top_k=40, top_p=0.95,
min_p=0.05, repeat_penalty=1.0, stop=None, seed=None, stream=False``)::

    import tilellm
    with tilellm.load("model.gguf") as model:
        print(model.generate("Once upon a time", max_tokens=32).text)
        for chunk in model.generate("Hello", max_tokens=32, stream=True):
            print(chunk.text, end="", flush=True)

KV cache: a model holds one context and remembers which tokens are in it. ``generate`` keeps the
longest prefix its prompt shares with them (llama-cpp-python's prefix matching: the last prompt token is
always evaluated again, for its logits), evaluates only the rest (in batches of ``n_batch``), then
appends one token at a time; a multi-turn chat thus evaluates only each turn's new tokens. ``eval``
appends to the same cache, ``reset`` forgets it, and a call to ``generate``, ``eval`` or ``reset``
invalidates any stream still being consumed. Reused and fresh evaluations differ at most in the
rounding of the positions evaluated one at a time rather than in a batch (see ``docs/coming-from-llama-cpp-python.md``).

Threads: a ``Model`` may be shared between threads. Each call (``generate``, ``eval``, ``reset``,
``tokenize``, ``chat_prompt``, ...) holds the model's lock while it runs, so concurrent calls are
serialised, never interleaved; a streamed generation takes the lock for each step, so another call
between two steps interrupts it (the stream then raises RuntimeError, as in one thread). To make a
sequence of calls atomic (``reset`` then ``eval``), hold ``model.lock`` (re-entrant) around it.

Context budget: prompt tokens + generated tokens never exceed ``n_ctx``. A prompt longer than the
context raises ``ContextOverflowError``; generation that fills the context ends with
``finish_reason == "length"`` — unless ``generate(context_shift=True)`` shifts the context as llama.cpp does.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Mapping, Sequence, TypedDict, TypeVar, overload

import numpy as np

from tilellm import backend as backends
from tilellm.quant.errors import ContextOverflowError, GGUFFileNotFoundError, UnsupportedError
from tilellm.quant.kv import DEFAULT_KV_TYPE, kv_type

from .generation import (
    GenerationChunk,
    GenerationResult,
    LogitsProcessors,
    StoppingCriteria,
    Timings,
    TokenLogprob,
    check_stops,
    generation_loop,
)
from .gguf.reader import open_gguf
from .models import architectures
from .models.architectures import ArchFactory
from .models.base import Decoder, DecoderModel, check_numerics
from .text.factory import load_tokenizer
from .text.sampling import Sampler
from .text.tokenizer import StreamDecoder

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "load", "Model", "GenerationResult", "GenerationChunk", "Timings", "TokenLogprob", "ModelState",
    "register_architecture", "supported_architectures",
]

POOLING = ("mean", "cls", "last", "none")

# ----------------------------------------------------------------------------- architectures

# The table itself lives in architectures.py; these wrappers keep the public API in one place.


def register_architecture(name: str, factory: ArchFactory) -> None:
    """Make ``load`` handle GGUF files whose ``general.architecture`` is ``name``.

    ``factory(file, backend, n_ctx, n_batch, numerics)`` must return an object with ``eval(tokens,
    logits_all=False)``, ``reset()``, ``n_past``, ``n_ctx`` and ``n_vocab`` (like ``LlamaModel``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")
    architectures.register(name, factory)


def supported_architectures() -> list[str]:
    """Architecture names ``load`` accepts."""
    return sorted(architectures.ARCHITECTURES)


def _arch_factory(arch: Any) -> ArchFactory:
    """The model class for ``arch``; UnsupportedError naming it (and what is supported) if none."""
    if not isinstance(arch, str):
        raise UnsupportedError(f"unsupported model architecture: {arch!r}")
    return architectures.model_class(arch)


def _check_text(text: str | bytes | bytearray, what: str) -> str:
    """`text` as a str that encodes to UTF-8: ValueError naming the position of invalid UTF-8 bytes or of a lone
    surrogate (tokenizers cannot take either)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what} is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds a lone surrogate {text[e.start]!r} at position {e.start}, which is not "
                         "text (decode bytes with errors='replace' first)") from None
    return text


def _check_strings(value: Any, what: str, depth: int = 0) -> None:
    """`_check_text` on every string inside `value` (mappings and sequences, to a sane depth)."""
    if isinstance(value, str):
        _check_text(value, what)
    elif depth < 32 and isinstance(value, Mapping):
        for k, v in value.items():
            _check_strings(k, what, depth + 1)
            _check_strings(v, what, depth + 1)
    elif depth < 32 and isinstance(value, (list, tuple)):
        for v in value:
            _check_strings(v, what, depth + 1)


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run `method` holding the model's lock (see "Threads" in the module docstring)."""
    @functools.wraps(method)
    def wrapper(self: "Model", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _check_token_ids(ids: Any, n_vocab: int, what: str) -> list[int]:
    out: list[int] = []
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise ValueError(f"{what} must be integer token ids, got {t!r}")
        if not 0 <= int(t) < n_vocab:
            raise ValueError(f"token id {int(t)} in {what} is out of range for a vocabulary of {n_vocab}")
        out.append(int(t))
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ModelState:
    """A snapshot of a model's context (`Model.save_state`): the tokens and their KV-cache rows."""

    def __init__(self, tokens: list[int], arrays: dict[str, np.ndarray], n_ctx: int) -> None:
        self.tokens = tokens
        self.arrays = arrays
        self.n_ctx = n_ctx

    @property
    def nbytes(self) -> int:
        """Bytes of KV cache held."""
        return int(sum(a.nbytes for a in self.arrays.values()))


def _cache_arrays(decoder: Any) -> dict[str, np.ndarray] | None:
    """The decoder's KV-cache arrays (attributes named `*_cache`, position on axis 1), or None if it keeps its
    cache some other way (then a saved state is recomputed from its tokens on load)."""
    out = {}
    for name, v in vars(decoder).items():
        if name.endswith("_cache") and isinstance(v, np.ndarray):
            if v.ndim < 2 or v.shape[1] != decoder.n_ctx:
                return None
            out[name] = v
    return out or None


class GenerateOptions(TypedDict, total=False):
    """The keyword-only arguments of :meth:`Model.generate` (typing only: the overloads share them)."""

    repeat_last_n: int
    add_bos: bool | None
    ignore_eos: bool
    presence_penalty: float
    frequency_penalty: float
    typical_p: float
    logit_bias: Mapping[Any, float] | None
    logits_processor: LogitsProcessors | None
    stopping_criteria: StoppingCriteria | None
    logprobs: int | None
    mirostat_mode: int
    mirostat_tau: float
    mirostat_eta: float
    context_shift: bool
    n_keep: int
    n_discard: int


# ----------------------------------------------------------------------------- model

class Model:
    """A loaded GGUF model: tokenizer + forward pass + sampler. Create with :func:`load`."""

    def __init__(
        self,
        file: Any,
        decoder: Decoder,
        tokenizer: Any,
        backend: backends.Backend,
        *,
        n_batch: int = 512,
        seed: int | None = None,
        stream_decoder: Callable[[Any], Any] | None = None,
    ) -> None:
        self._lock = threading.RLock()  # one call at a time (module docstring, "Threads")
        self._longest_token: int | None = None  # characters of the longest token text, found on first use
        self._file = file
        self.decoder: Decoder | None = decoder  # the forward pass; None once closed
        self._tok = tokenizer
        self._backend = backend
        self._n_batch = int(n_batch)
        self._rng = np.random.default_rng(seed)
        if stream_decoder is None:
            # completion text continues the prompt (keep the first piece's leading space) and,
            # like llama.cpp / llama-cpp-python, does not render control tokens
            def stream_decoder(tok: Any) -> Any:
                return StreamDecoder(tok, skip_special=True, continuation=True)
        self._stream_decoder = stream_decoder
        self._epoch = 0  # bumped by every call that touches the KV cache; stale streams stop
        eog = getattr(tokenizer, "eog_ids", None)
        if not eog:
            eos = getattr(tokenizer, "eos_id", None)
            eog = () if eos is None else (eos,)
        self._eog = frozenset(int(t) for t in eog)
        self._ctx_tokens: list[int] = []  # the tokens whose K/V are in the cache, in order
        self.n_evaluated = 0  # tokens run through the forward pass since load (prefix reuse shows here)

    # -- properties ----------------------------------------------------------------------
    @property
    def lock(self) -> threading.RLock:
        """The re-entrant lock every call holds; hold it to make several calls one atomic step."""
        return self._lock

    def _live(self) -> Decoder:
        if self.decoder is None:
            raise RuntimeError("the model is closed")
        return self.decoder

    def _live_file(self) -> Any:
        if self._file is None:
            raise RuntimeError("the model is closed")
        return self._file

    @property
    def n_vocab(self) -> int:
        """Vocabulary size (rows of the output layer)."""
        return int(self._live().n_vocab)

    @property
    def n_ctx(self) -> int:
        """Context window in tokens."""
        return int(self._live().n_ctx)

    @property
    def n_batch(self) -> int:
        """Prompt tokens evaluated per forward pass."""
        return self._n_batch

    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        return int(self._live().n_past)

    @property
    def n_threads(self) -> int:
        """Threads the backend runs matmuls with."""
        return int(self._backend.n_threads)

    @property
    def backend(self) -> str:
        """Name of the matmul backend in use."""
        return str(self._backend.name)

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF metadata (key -> value)."""
        return self._live_file().metadata

    @property
    def arch(self) -> str:
        """The GGUF ``general.architecture``."""
        return str(self._live_file().arch)

    @property
    def path(self) -> str:
        return str(getattr(self._live_file(), "path", ""))

    @property
    def tokenizer(self) -> Any:
        return self._tok

    @property
    def eog_ids(self) -> frozenset[int]:
        """Token ids that end generation (EOS, EOT, ...)."""
        return self._eog

    @property
    def n_params(self) -> int:
        """Number of weights in the file."""
        return int(sum(int(np.prod(t.shape, dtype=np.int64)) for t in self._live_file().tensors.values()))

    @property
    def model_size(self) -> int:
        """Bytes of tensor data in the file."""
        return int(sum(int(t.data.nbytes) for t in self._live_file().tensors.values()))

    @property
    def desc(self) -> str:
        """Short description like llama.cpp's: ``"llama 3.6M Q4_0"``."""
        n = self.n_params
        size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
        return f"{self.arch} {size} {self.weight_type}"

    @property
    def weight_type(self) -> str:
        """The file's weight type like llama.cpp names it (``general.file_type``, e.g. ``"Q4_K_M"``),
        else the type holding most bytes of the 2-D weights."""
        ft = self._live_file().metadata.get("general.file_type")
        if isinstance(ft, (int, np.integer)) and not isinstance(ft, bool):
            try:
                import gguf

                name = gguf.LlamaFileType(int(ft)).name
                if name != "GUESSED":
                    return name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except (ImportError, ValueError):
                pass
        by_type: dict[str, int] = {}
        for t in self._live_file().tensors.values():
            if len(t.shape) >= 2:
                by_type[t.type.name] = by_type.get(t.type.name, 0) + int(t.data.nbytes)
        return max(by_type, key=by_type.__getitem__) if by_type else "?"

    # -- tokens --------------------------------------------------------------------------
    @_locked
    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    template_name: str | None = None, *, template: str | None = None,
                    chat_format: str | None = None,
                    **template_vars: Any) -> list[int]:
        """Token ids of `messages` rendered with the model's chat template (sandboxed jinja2).

        The template is the GGUF's `tokenizer.chat_template` (or `tokenizer.chat_template.<template_name>`;
        a built-in format detected from its tokens and architecture if the file has none), the built-in
        `chat_format` (`"gemma"`, `"llama-3"`, `"chatml"` ...) if given, or the jinja source ``template`` if given.
        Control tokens in the rendered text become their ids; BOS is added only if the model adds one and the
        template did not already write it.
        """
        from .text.chat import get_chat_template, render_chat

        _check_strings(messages, "a chat message")  # before the render: the worker would only time out
        _check_strings(template_vars, "a chat template variable")
        source = template if template is not None else get_chat_template(self.metadata, template_name,
                                                                            chat_format=chat_format)
        bos_id, eos_id = getattr(self._tok, "bos_id", None), getattr(self._tok, "eos_id", None)

        def piece(i: int | None) -> str:
            if i is None or i < 0:
                return ""
            return self._tok.token_to_piece(i, special=True).decode("utf-8", "replace")

        bos_text, eos_text = piece(bos_id), piece(eos_id)
        text = render_chat(source, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=bos_text, eos_token=eos_text, max_chars=self._max_prompt_chars(),
                           **template_vars)
        text = _check_text(text, "the rendered chat prompt")
        has_bos = bool(bos_text) and text.startswith(bos_text)
        ids = list(self._tok.encode(text, add_bos=not has_bos and getattr(self._tok, "add_bos", False), special=True))
        if not ids:
            raise ValueError("the chat template rendered an empty prompt")
        return ids

    def _max_prompt_chars(self) -> int:
        """The longest text that can fit in the context: n_ctx tokens of the longest token text (a token never
        covers more characters than its text has), capped by the renderer's own limit."""
        from .text.chat import RENDER_MAX_CHARS

        if self._longest_token is None:
            tokens = getattr(self._tok, "tokens", None) or ()
            self._longest_token = max((len(t) for t in tokens), default=0) or RENDER_MAX_CHARS
        return int(min(RENDER_MAX_CHARS, self.n_ctx * self._longest_token))

    @_locked
    def chat(self, messages: Sequence[Mapping[str, Any]], *, template_name: str | None = None,
             chat_format: str | None = None, **generate_kwargs: Any) -> GenerationResult | Iterator[GenerationChunk]:
        """Reply to a conversation: `messages` = [{"role": "system"|"user"|"assistant", "content": str}, ...].

        Renders the model's chat template with the generation prompt appended, then `generate()`s
        (same arguments; llama-cpp-python's chat default temperature 0.2 unless given). Generation
        stops at the end-of-turn tokens the tokenizer knows (eos, eot, ...).
        """
        generate_kwargs.setdefault("temperature", 0.2)
        prompt = self.chat_prompt(messages, template_name=template_name, chat_format=chat_format)
        return self.generate(prompt, **generate_kwargs)

    @_locked
    def tokenize(self, text: str | bytes, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text`` (UTF-8 bytes accepted); ``special`` parses control-token text.

        ``add_bos``: None (default) adds BOS as the model asks (``tokenizer.ggml.add_bos_token``), as
        ``generate`` does with a text prompt; True/False force it."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise ValueError(f"tokenize() needs str or bytes, got {type(text).__name__}")
        text = _check_text(text, "tokenize() input")
        return list(self._tok.encode(text, add_bos=add_bos, special=special))

    @_locked
    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        """Text of ``ids``; special tokens (BOS, EOS, ...) are rendered only if ``special``."""
        ids = _check_token_ids(ids, self.n_vocab, "detokenize() input")
        bos = getattr(self._tok, "bos_id", None)
        if ids and bos is not None and ids[0] == bos:
            # decode the rest as a sequence start so SentencePiece's dummy-prefix space is
            # dropped: detokenize(tokenize(text)) == text
            head = self._tok.decode(ids[:1], skip_special=False) if special else ""
            return head + self._tok.decode(ids[1:], skip_special=not special)
        return self._tok.decode(ids, skip_special=not special)

    # -- raw evaluation ------------------------------------------------------------------
    @_locked
    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Append ``tokens`` to the context; logits ``[n_vocab]`` of the last one, or
        ``[len(tokens), n_vocab]`` with ``logits_all``."""
        decoder = self._live()
        ids = _check_token_ids(tokens, self.n_vocab, "eval() input")
        if not ids:
            raise ValueError("eval() needs at least one token")
        if decoder.n_past + len(ids) > decoder.n_ctx:
            raise ContextOverflowError(
                f"Requested tokens ({decoder.n_past + len(ids)}) exceed context window of {decoder.n_ctx}")
        self._epoch += 1
        return self._eval_tracked(ids, logits_all)

    @_locked
    def reset(self) -> None:
        """Empty the context (KV cache)."""
        self._epoch += 1
        self._ctx_tokens = []
        self._live().reset()

    @property
    def context_tokens(self) -> list[int]:
        """The tokens in the KV cache, in order (a copy)."""
        return list(self._ctx_tokens) if len(self._ctx_tokens) == self._live().n_past else []

    def _eval_tracked(self, ids: list[int], logits_all: bool = False) -> np.ndarray:
        """decoder.eval(ids), keeping the record of the cached tokens (unknown, hence empty, if it fails)."""
        decoder = self._live()
        known = self._ctx_tokens if len(self._ctx_tokens) == decoder.n_past else []
        self._ctx_tokens = []
        out = decoder.eval(ids, logits_all=logits_all)
        self.n_evaluated += len(ids)
        known.extend(ids)
        self._ctx_tokens = known
        return out

    def _prefill(self, ids: list[int]) -> tuple[np.ndarray, int]:
        """Make the cache hold `ids`, reusing the longest cached prefix (all but the last token at most, whose
        logits are needed); the logits of the last one and the number of tokens reused."""
        decoder = self._live()
        keep = 0
        truncate = getattr(decoder, "truncate", None)  # a registered decoder may lack it: then no reuse
        if len(self._ctx_tokens) == decoder.n_past and truncate is not None:
            keep = min(_common_prefix(self._ctx_tokens, ids), len(ids) - 1)
        if keep > 0 and truncate is not None:
            truncate(keep)
            del self._ctx_tokens[keep:]
        else:
            self._ctx_tokens = []
            decoder.reset()
        return self._eval_tracked(ids[keep:]), keep

    @_locked
    def save_state(self) -> ModelState:
        """A copy of the context (tokens and KV-cache rows) that :meth:`load_state` restores."""
        decoder = self._live()
        tokens = self.context_tokens
        arrays = _cache_arrays(decoder) or {}
        n = len(tokens)
        return ModelState(tokens, {k: np.array(v[:, :n], copy=True) for k, v in arrays.items()}, int(decoder.n_ctx))

    @_locked
    def load_state(self, state: ModelState) -> None:
        """Restore a context saved by :meth:`save_state` (of a model with the same file and ``n_ctx``)."""
        if not isinstance(state, ModelState):
            raise ValueError(f"load_state() needs a ModelState from save_state(), got {type(state).__name__}")
        decoder = self._live()
        self.reset()
        if not state.tokens:
            return
        arrays = _cache_arrays(decoder)
        n = len(state.tokens)
        if arrays is not None and set(arrays) == set(state.arrays) and state.n_ctx == decoder.n_ctx:
            for k, v in arrays.items():
                if v.dtype != state.arrays[k].dtype:
                    raise ValueError("load_state(): the state was saved with another KV cache type")
                if v.shape[2:] != state.arrays[k].shape[2:] or state.arrays[k].shape[1] != n:
                    raise ValueError("load_state(): the state was saved from a different model")
            for k, v in arrays.items():
                v[:, :n] = state.arrays[k]
            decoder.reset()
            decoder.n_past = n
            self._ctx_tokens = list(state.tokens)
        else:  # a decoder without `*_cache` arrays: recompute the context
            self._eval_tracked(_check_token_ids(state.tokens, self.n_vocab, "state tokens"))

    @_locked
    def embed(self, text: str | Sequence[int], pooling: str = "mean", normalize: bool = True,
              truncate: bool = True) -> np.ndarray:
        """The embedding of ``text`` (or token ids): final-normed hidden states pooled over the tokens ("mean",
        "cls" = first, "last"), float32 ``[n_embd]``, or per token ``[T, n_embd]`` with "none"; L2-normalised
        with ``normalize``. ``truncate`` cuts a text longer than the context (else ContextOverflowError).
        Uses the KV cache: the context is reset."""
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {', '.join(POOLING)}, got {pooling!r}")
        decoder = self._live()
        eval_hidden = getattr(decoder, "eval_hidden", None)
        if eval_hidden is None:
            raise UnsupportedError(f"the {self.arch} model does not expose hidden states, so it cannot embed")
        ids = self._prompt_ids(text, None)
        if len(ids) > self.n_ctx:
            if not truncate:
                raise ContextOverflowError(f"Requested tokens ({len(ids)}) exceed context window of {self.n_ctx}")
            ids = ids[:self.n_ctx]
        self.reset()
        h = np.asarray(eval_hidden(ids), dtype=np.float32)
        decoder.reset()  # the cache holds these tokens' K/V, but they are not worth tracking
        self.n_evaluated += len(ids)
        out = {"mean": lambda: h.mean(axis=0), "cls": lambda: h[0], "last": lambda: h[-1], "none": lambda: h}[pooling]()
        if normalize:
            norm = np.linalg.norm(out, axis=-1, keepdims=True)
            out = out / np.maximum(norm, np.float32(1e-12))
        return np.asarray(out, dtype=np.float32)

    # -- generation ----------------------------------------------------------------------
    @overload
    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = 16, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 stop: str | Sequence[str] | None = None, seed: int | None = None, stream: Literal[False] = False,
                 **options: Unpack[GenerateOptions]) -> GenerationResult: ...

    @overload
    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = 16, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 stop: str | Sequence[str] | None = None, seed: int | None = None, stream: Literal[True] = ...,
                 **options: Unpack[GenerateOptions]) -> Iterator[GenerationChunk]: ...

    @overload
    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = 16, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
                 **options: Unpack[GenerateOptions]) -> GenerationResult | Iterator[GenerationChunk]: ...

    @_locked
    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        *,
        repeat_last_n: int = 64,
        add_bos: bool | None = None,
        ignore_eos: bool = False,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        typical_p: float = 1.0,
        logit_bias: Mapping[Any, float] | None = None,
        logits_processor: LogitsProcessors | None = None,
        stopping_criteria: StoppingCriteria | None = None,
        logprobs: int | None = None,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        context_shift: bool = False,
        n_keep: int = 0,
        n_discard: int = 0,
    ) -> GenerationResult | Iterator[GenerationChunk]:
        """Continue ``prompt`` (text, or token ids used as given) and return the completion.

        ``max_tokens`` <= 0 or None generates until an end-of-generation token or a full
        context. ``temperature`` <= 0 is greedy. ``stop`` strings end generation and are left
        out of the text. ``seed`` makes this call reproducible; without it the model's own
        generator (seeded by ``load(seed=...)``) is used. ``add_bos`` (text prompts only)
        defaults to the GGUF's ``tokenizer.ggml.add_bos_token``. Control-token text in a
        text prompt (e.g. ``<|eot_id|>``) is parsed as the special token, as llama-cpp-python
        does for completions. ``ignore_eos`` never samples an end-of-generation token
        (llama.cpp's ``--ignore-eos``; for benchmarks).

        llama-cpp-python's sampler extras: ``presence_penalty`` / ``frequency_penalty`` (over the last
        ``repeat_last_n`` tokens), ``typical_p``, ``logit_bias`` ({token id: added logit}),
        ``logits_processor`` (``f(input_ids: int32 array, logits: float32 [n_vocab]) -> logits``, or a
        list of them, applied first at each step: the hook grammar constraints use),
        ``stopping_criteria`` (``f(input_ids, logits) -> bool``: true ends generation) and ``logprobs``
        (n: each token's log-probability and the n most likely alternatives, in ``.logprobs``).
        ``mirostat_mode`` 1 or 2 samples with Mirostat (target surprise ``mirostat_tau`` in bits, learning rate
        ``mirostat_eta``) instead of top-k / top-p / min-p / typical-p, as llama.cpp does.

        The prompt reuses the longest prefix it shares with the tokens already in the KV cache.

        ``context_shift`` (llama.cpp's ``--context-shift``; off by default, as in llama.cpp and llama-cpp-python,
        where generation ends at a full context with ``finish_reason`` "length"): when the next token would pass
        ``n_ctx``, keep the first ``n_keep`` prompt tokens (llama.cpp's ``--keep``: 0 by default, -1 = the whole
        prompt; a BOS the prompt starts with is kept besides), discard the next ``n_discard`` (0: half of what
        follows the kept ones, llama.cpp's rule) and move the rest down, their cached keys re-rotated to their new
        positions; generation goes on, so ``max_tokens`` None or <= 0 then means until an end-of-generation token.

        With ``stream=True`` returns an iterator of :class:`GenerationChunk`; arguments are
        checked and the prompt tokenized before it is returned.
        """
        decoder = self._live()
        sampler = Sampler(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                          seed=self._rng if seed is None else seed, presence_penalty=presence_penalty,
                          frequency_penalty=frequency_penalty, typical_p=typical_p, logit_bias=logit_bias,
                          mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, (int, np.integer))
                                     or logprobs < 0):
            raise ValueError(f"logprobs must be an integer >= 0 or None, got {logprobs!r}")
        stops = check_stops(stop)
        ids = self._prompt_ids(prompt, add_bos)
        n_ctx = int(decoder.n_ctx)
        if len(ids) > n_ctx:
            raise ContextOverflowError(f"Requested tokens ({len(ids)}) exceed context window of {n_ctx}")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer))):
            raise ValueError(f"max_tokens must be an integer or None, got {max_tokens!r}")
        shift = self._shift_plan(decoder, ids, n_keep, n_discard) if context_shift else None
        room = n_ctx - len(ids) if shift is None else sys.maxsize  # a shift always makes room
        budget = room if max_tokens is None or max_tokens <= 0 else min(int(max_tokens), room)
        self._epoch += 1
        it = self._run(ids, budget, sampler, stops, self._epoch, bool(ignore_eos), shift,
                       logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                       logprobs=None if logprobs is None else int(logprobs))
        if stream:
            return self._stepwise_locked(it)
        texts: list[str] = []
        tokens: list[int] = []
        lps: list[TokenLogprob] = []
        last: GenerationChunk | None = None
        for last in it:
            texts.append(last.text)
            tokens.extend(last.tokens)
            lps.extend(last.logprobs or ())
        assert last is not None and last.finish_reason is not None
        return GenerationResult("".join(texts), tokens, last.finish_reason, last.prompt_tokens,
                                last.completion_tokens, last.timings or Timings(),
                                logprobs=lps if logprobs is not None else None, cached_tokens=last.cached_tokens)

    def _stepwise_locked(self, it: Iterator[GenerationChunk]) -> Iterator[GenerationChunk]:
        """`it` with the model's lock held for each step (not between steps: the consumer may be slow)."""
        while True:
            with self._lock:
                chunk = next(it, None)
            if chunk is None:
                return
            yield chunk

    def __call__(self, prompt: str | Sequence[int], **kwargs: Any) -> GenerationResult | Iterator[GenerationChunk]:
        """Same as :meth:`generate`."""
        return self.generate(prompt, **kwargs)

    def _prompt_ids(self, prompt: str | Sequence[int], add_bos: bool | None) -> list[int]:
        if isinstance(prompt, (str, bytes, bytearray)):
            prompt = _check_text(prompt, "prompt")
            ids = list(self._tok.encode(prompt, add_bos=add_bos, special=True))
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = _check_token_ids(list(np.asarray(prompt).reshape(-1)) if isinstance(prompt, np.ndarray)
                                   else prompt, self.n_vocab, "prompt")
        else:
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            want_bos = getattr(self._tok, "add_bos", False) if add_bos is None else add_bos
            bos = getattr(self._tok, "bos_id", None)
            if want_bos and bos is not None and bos >= 0:
                ids = [int(bos)]
            else:
                raise ValueError("empty prompt: the model adds no BOS token, so there is nothing to condition on")
        return ids

    def _shift_plan(self, decoder: Decoder, ids: list[int], n_keep: Any, n_discard: Any) -> tuple[int, int]:
        """(tokens kept, tokens discarded or 0 for half) of a context shift for prompt `ids`, checked: the decoder
        can shift, and a full context leaves something to discard (llama.cpp's --keep rules: -1 or more than the
        prompt = the whole prompt, and a leading BOS is kept besides)."""
        if getattr(decoder, "shift_context", None) is None:
            raise UnsupportedError(f"the {self.arch} model cannot shift its context (context_shift=True)")
        for name, v, lo in (("n_keep", n_keep, -1), ("n_discard", n_discard, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        n_ctx = int(decoder.n_ctx)
        if n_keep >= n_ctx:
            raise ValueError(f"n_keep ({n_keep}) must be below n_ctx ({n_ctx}) for a context shift")
        bos = getattr(self._tok, "bos_id", None)
        keep = len(ids) if n_keep < 0 or n_keep > len(ids) else min(len(ids), int(n_keep) + int(ids[0] == bos))
        need = 1 if n_discard else 2  # a full context then discards n_discard, or half of n_ctx - keep
        if keep > n_ctx - need:
            raise ValueError(f"a context shift keeping {keep} tokens leaves nothing to discard in a context of {n_ctx} "
                             f"(keep at most {n_ctx - need}: a smaller n_keep or a larger n_ctx)")
        return keep, int(n_discard)

    def _shift(self, keep: int, n_discard: int) -> None:
        """Shift the full context: `keep` tokens stay, `n_discard` (0: half the rest) go, the rest move down."""
        decoder = self._live()
        n_left = int(decoder.n_past) - keep
        drop = min(n_discard, n_left) if n_discard else n_left // 2
        tracked = len(self._ctx_tokens) == decoder.n_past
        decoder.shift_context(keep, drop)  # type: ignore[attr-defined]
        if tracked:
            del self._ctx_tokens[keep:keep + drop]
        else:
            self._ctx_tokens = []

    def _run(self, ids: list[int], budget: int, sampler: Sampler, stops: list[str], epoch: int,
             ignore_eos: bool = False, shift: tuple[int, int] | None = None,
             **hooks: Any) -> Iterator[GenerationChunk]:
        """The generation loop shared by streamed and plain calls; it stops with a RuntimeError once a later call
        touches the KV cache. `shift`: (keep, n_discard) of a context shift when the context is full."""
        def check_current() -> None:
            if self._epoch != epoch or self.decoder is None:
                raise RuntimeError("this generation was interrupted by a later generate(), eval(), reset() "
                                   "or close() on the same model")

        def step(tok: int) -> np.ndarray:
            decoder = self._live()
            if shift is not None and decoder.n_past >= decoder.n_ctx:
                self._shift(*shift)
            return self._eval_tracked([tok])

        return generation_loop(self._prefill, step, ids, budget, sampler, stops, self._stream_decoder(self._tok),
                               self._eog, ignore_eos, check_current, **hooks)

    # -- lifetime ------------------------------------------------------------------------
    @_locked
    def close(self) -> None:
        """Release the KV cache and the file mapping. The model is unusable afterwards."""
        self._epoch += 1
        self.decoder = None
        self._ctx_tokens = []
        f, self._file = self._file, None
        if f is not None and hasattr(f, "close"):
            f.close()

    @property
    def closed(self) -> bool:
        return self.decoder is None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.decoder is None:
            return "<tilellm.Model closed>"
        return f"<tilellm.Model {self.desc} n_ctx={self.n_ctx} backend={self.backend} threads={self.n_threads}>"


# ----------------------------------------------------------------------------- load

def _check_int_arg(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


class _NoTokenizer:
    """Stands in for the tokenizer of a file that has none (``load(tokenizer=None)``)."""

    bos_id = eos_id = None
    add_bos = False
    eog_ids: frozenset = frozenset()

    def __getattr__(self, name: str) -> Any:
        raise UnsupportedError(f"this model file has no tokenizer (tokenizer.{name} is unavailable); "
                               "only eval() with token ids works")


def load(
    path: str | os.PathLike[str],
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_batch: int = 512,
    backend: str = "auto",
    seed: int | None = None,
    *,
    tokenizer: bool | None = True,
    numerics: str = "default",
    type_k: str | int = "f16",
    type_v: str | int = "f16",
) -> Model:
    """Open a GGUF model for inference.

    ``tokenizer``: True (default) requires the file's tokenizer; None uses it if the file has one (for
    benchmarks of synthetic files without a vocabulary: ``eval`` works, text methods raise UnsupportedError).

    ``n_ctx``: None → min(the model's context_length, 4096); 0 → the model's context_length.
    ``n_threads``: None → physical cores. ``n_batch``: prompt tokens per forward pass.
    ``backend``: "auto" (best this CPU runs, or ``$TILELLM_BACKEND``) or a name from
    ``tilellm.backend.available()``. ``seed``: seeds the model's sampling generator (None = random).
    ``numerics``: "default" (the most accurate arithmetic we have) or "ggml" — llama.cpp's rounding
    choices where they differ from ours, to compare with it: activations of quantized matmuls with one
    scale per 32 values stored in fp16 (per 256 for K-quants; this model's backend only,
    ``tilellm.kernels.load(act_rounding=...)``), GELU looked up in an fp16 table, and K, V and q rounded to
    fp16 as llama.cpp's default f16 KV cache does. The activation rounding needs a kernel backend.
    ``type_k`` / ``type_v``: the KV cache's storage types, "f16" (default, as llama.cpp), "f32", "bf16" or
    "q8_0" (ggml's 32-value blocks; head sizes must be multiples of 32), or the ggml type ids 1, 0, 30, 8 that
    llama-cpp-python's ``type_k`` / ``type_v`` take. Attention reads the stored type directly.

    Raises FileNotFoundError (naming the path; also a ``GGUFError``), ``GGUFError`` for a malformed file,
    ``UnsupportedError`` naming an architecture/tensor type/tokenizer we do not handle,
    ``BackendUnavailableError``, and ValueError for bad arguments.
    """

    if n_ctx is not None:
        n_ctx = _check_int_arg("n_ctx", n_ctx, 0)
    n_threads = None if n_threads is None else _check_int_arg("n_threads", n_threads, 1)
    n_batch = _check_int_arg("n_batch", n_batch, 1)
    if seed is not None:
        seed = _check_int_arg("seed", seed, 0)
    check_numerics(numerics)
    kv_types = {"type_k": kv_type(type_k, "type_k"), "type_v": kv_type(type_v, "type_v")}
    p = os.fspath(path)
    if not os.path.exists(p):
        raise GGUFFileNotFoundError(2, "Model path does not exist", p)  # also a TileLLMError
    if os.path.isdir(p):
        raise IsADirectoryError(21, "Model path is a directory, not a GGUF file", p)
    file = open_gguf(p)
    try:
        arch = file.arch
        factory = _arch_factory(arch)
        ctx_train = file.metadata.get(f"{arch}.context_length")
        if n_ctx is None or n_ctx == 0:
            if not isinstance(ctx_train, (int, np.integer)) or isinstance(ctx_train, bool) or ctx_train < 1:
                ctx_train = 4096  # files without the key: a conservative window
            n_ctx = int(ctx_train) if n_ctx == 0 else min(int(ctx_train), 4096)
        be = backends.get(backend, n_threads, act_rounding="ggml" if numerics == "ggml" else "fine")
        tok: Any
        if tokenizer is None and "tokenizer.ggml.model" not in file.metadata:
            tok = _NoTokenizer()
        else:
            tok = load_tokenizer(file.metadata)
        make: Any = factory
        if isinstance(factory, type) and issubclass(factory, DecoderModel):  # the built-in models take the types
            decoder = make(file, be, n_ctx, n_batch, numerics, **kv_types)
        elif any(t != DEFAULT_KV_TYPE for t in kv_types.values()):
            raise UnsupportedError(f"the factory registered for {arch!r} takes no type_k / type_v")
        else:
            decoder = make(file, be, n_ctx, n_batch, numerics)
    except BaseException:
        file.close()
        raise
    return Model(file, decoder, tok, be, n_batch=n_batch, seed=seed)
