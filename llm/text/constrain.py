"""Structured output: JSON mode, JSON schema and GBNF grammars constrain sampling so the output parses.

The grammar engine is llguidance (the one llama.cpp uses): its ``LLMatcher`` walks the grammar token by token and
computes, for every step, the bitmask of tokens that keep the output inside the grammar. This module builds the
library's tokenizer description from ours (every token's bytes, control tokens marked special, the
end-of-generation ids as EOS) and exposes one object::

    c = Constraint(tokenizer, response_format={"type": "json_object"})   # or grammar=GBNF, json_schema=...
    logits = c(input_ids, logits)     # a logits processor: disallowed tokens -> -inf
    c.done                            # the grammar is complete: only an end-of-generation token may follow

``Constraint.__call__`` has llama-cpp-python's logits-processor signature (``input_ids`` = every token so far,
prompt included; the constraint consumes the ones generated since its first call). ``iter_constrained`` /
``generate_constrained`` run a model step by step with a constraint, for callers whose ``generate`` has no
``logits_processor``.

Why llguidance: on Gemma 3's 262 144-token vocabulary it computes a mask in tens of microseconds once the
tokenizer is built (a one-time ~0.3-1 s), see docs/structured-output.md for the measurements against
outlines-core and our decode time.
"""
from __future__ import annotations

import json
import time
import weakref
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tilellm.quant.errors import UnsupportedError

from .tokenizer import TokenType

__all__ = ["Constraint", "ConstraintError", "build_lltokenizer", "generate_constrained", "grammar_source",
           "iter_constrained", "logits_processor"]


class ConstraintError(UnsupportedError):
    """A grammar, schema or response format that cannot be used (bad syntax, unsupported feature ...)."""


def _llg() -> Any:
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ConstraintError("structured output needs the 'llguidance' package (pip install llguidance)") from e
    return llguidance


class _Encode:
    """The tokenize callback llguidance needs: plain text in the middle of an output (no BOS, no special-token
    parsing, and no SentencePiece dummy-prefix space, which belongs only at the start of a prompt)."""

    def __init__(self, tokenizer: Any, pieces: list[bytes]) -> None:
        # weak: llguidance keeps this callback, and the cache must not keep a closed model's tokenizer alive
        self._tokenizer = weakref.ref(tokenizer)
        self.pieces = pieces
        self._by_piece: dict[bytes, int] | None = None

    @property
    def tokenizer(self) -> Any:
        tok = self._tokenizer()
        if tok is None:
            raise ConstraintError("the tokenizer of this constraint is gone (its model was released)")
        return tok

    def _greedy(self, data: bytes) -> list[int]:
        """Longest-match tokenization of ``data`` over the normal tokens' bytes (a short tail only)."""
        if self._by_piece is None:
            tok = self.tokenizer
            self._by_piece = {}
            for i, p in enumerate(self.pieces):
                if p and not tok.is_control(i):
                    self._by_piece.setdefault(p, i)
        out, i = [], 0
        longest = 64
        while i < len(data):
            for j in range(min(len(data), i + longest), i, -1):
                t = self._by_piece.get(data[i:j])
                if t is not None:
                    out.append(t)
                    i = j
                    break
            else:
                raise ValueError(f"no token covers byte {data[i]:#x}")
        return out

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # llguidance probes bytes once, then sends str
            raise TypeError("text only")
        ids = list(self.tokenizer.encode(text, add_bos=False, special=False))
        if ids and getattr(self.tokenizer, "add_space_prefix", False):
            first = self.pieces[ids[0]]
            if first.startswith(b" "):  # SentencePiece always adds the dummy prefix: re-cut without it
                ids = self._greedy(first[1:]) + ids[1:]
        return ids


class _TokenizerInfo:
    """The attributes llguidance's ``TokenizerWrapper`` reads."""

    def __init__(self, tokenizer: Any, n_vocab: int, eos: list[int]) -> None:
        n_tok = int(tokenizer.n_vocab)
        to_piece = tokenizer.token_to_piece
        pieces = [bytes(to_piece(i, special=True)) for i in range(n_tok)]
        pieces.extend(b"" for _ in range(n_vocab - n_tok))  # logits rows past the vocabulary: never allowed
        # control tokens and end-of-generation ids are special: grammar text never matches them
        types = np.asarray(tokenizer.token_types, dtype=np.int64)
        special = set(np.flatnonzero(types == int(TokenType.CONTROL)).tolist())
        special.update(int(i) for i in getattr(tokenizer, "eog_ids", ()) or ())
        self.tokens = pieces
        self.special_token_ids = sorted(special)
        self.eos_token_id = eos[0]
        bos = getattr(tokenizer, "bos_id", None)
        self.bos_token_id = bos if bos is not None and bos >= 0 else None
        self._encode = _Encode(tokenizer, pieces)

    def __call__(self, text: str) -> list[int]:
        return self._encode(text)


# per tokenizer object (weakly: a closed model's description goes with it), per logits length
_LLTOK_CACHE: "weakref.WeakKeyDictionary[Any, dict[int, Any]]" = weakref.WeakKeyDictionary()


def build_lltokenizer(tokenizer: Any, n_vocab: int | None = None) -> Any:
    """llguidance's ``LLTokenizer`` for our ``tokenizer``, cached per tokenizer object (building it takes seconds on a
    262k vocabulary)."""
    n = int(n_vocab if n_vocab is not None else tokenizer.n_vocab)
    try:
        per_tok = _LLTOK_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no caching
        per_tok = {}
    if n in per_tok:
        return per_tok[n]
    llg = _llg()
    eog = sorted(int(i) for i in getattr(tokenizer, "eog_ids", ()) or ())
    eos = getattr(tokenizer, "eos_id", None)
    eos_ids = ([int(eos)] if eos is not None and eos >= 0 else []) + [i for i in eog if i != eos]
    if not eos_ids:
        raise ConstraintError("structured output needs an end-of-generation token, and this tokenizer has none")
    from llguidance._tokenizer import TokenizerWrapper  # the documented way to describe a non-HF tokenizer

    info = _TokenizerInfo(tokenizer, n, eos_ids)
    lltok = llg.LLTokenizer(TokenizerWrapper(info), n_vocab=n, eos_token=eos_ids)
    per_tok[n] = lltok
    return lltok


def _schema_text(schema: Any) -> str:
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise ConstraintError(f"the JSON schema is not valid JSON: {e}") from None
    if not isinstance(schema, Mapping):
        raise ConstraintError(f"a JSON schema must be an object, got {type(schema).__name__}")
    return json.dumps(schema)


# Compact JSON: a flexible-whitespace grammar lets a weak model pad with blanks until it runs out of tokens.
_JSON_OPTIONS = {"whitespace_flexible": False}


def grammar_source(response_format: Mapping[str, Any] | None = None, grammar: str | None = None,
                   json_schema: Any = None) -> str | None:
    """The llguidance grammar for exactly one of the three ways to ask for structure (None: unconstrained).

    * ``response_format``: OpenAI / llama-cpp-python's ``{"type": "text"}``, ``{"type": "json_object"}``
      (any JSON object; ``"schema"`` narrows it), ``{"type": "json_schema", "json_schema": {"schema": ...}}``;
    * ``grammar``: GBNF text (llama.cpp's grammar format; Lark is accepted too);
    * ``json_schema``: a bare JSON schema (dict or JSON text).
    """
    given = [x is not None for x in (response_format, grammar, json_schema)]
    if sum(given) > 1:
        raise ConstraintError("give only one of response_format, grammar and json_schema")
    llg = _llg()
    if grammar is not None:
        if not isinstance(grammar, str) or not grammar.strip():
            raise ConstraintError("grammar must be non-empty GBNF text")
        try:
            return str(llg.grammar_from("gbnf", grammar))
        except ValueError as e:
            raise ConstraintError(f"bad grammar: {' '.join(str(e).split())}") from None
    if response_format is not None:
        if not isinstance(response_format, Mapping):
            raise ConstraintError("response_format must be a mapping like {'type': 'json_object'}")
        kind = response_format.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            json_schema = response_format.get("schema") or {"type": "object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if isinstance(spec, Mapping) and "schema" in spec:
                json_schema = spec["schema"]
            elif isinstance(spec, Mapping) and spec:
                json_schema = spec
            else:
                raise ConstraintError("response_format json_schema needs {'json_schema': {'schema': {...}}}")
        else:
            raise ConstraintError(f"unknown response_format type {kind!r} (text, json_object, json_schema)")
    if json_schema is None:
        return None
    text = _schema_text(json_schema)
    try:
        return str(llg.LLMatcher.grammar_from_json_schema(text, overrides=_JSON_OPTIONS))
    except (ValueError, TypeError) as e:
        raise ConstraintError(f"bad JSON schema: {' '.join(str(e).split())}") from None


class Constraint:
    """A grammar that constrains sampling, usable as a logits processor.

    Args:
        tokenizer: our tokenizer (``tilellm.llm.text``), e.g. ``model.tokenizer``.
        response_format, grammar, json_schema: exactly one (see ``grammar_source``).
        n_vocab: the logits' length if larger than the tokenizer's (padded vocabularies).

    Raises:
        ConstraintError: a bad grammar or schema (one line, from the library's message).
    """

    def __init__(self, tokenizer: Any, *, response_format: Mapping[str, Any] | None = None,
                 grammar: str | None = None, json_schema: Any = None, n_vocab: int | None = None) -> None:
        src = grammar_source(response_format, grammar, json_schema)
        if src is None:
            raise ConstraintError("nothing to constrain: give a grammar, a JSON schema or a JSON response_format")
        llg = _llg()
        self.n_vocab = int(n_vocab if n_vocab is not None else tokenizer.n_vocab)
        self.tokenizer = tokenizer  # keeps the tokenizer (weakly held by the cached description) alive
        self._lltok = build_lltokenizer(tokenizer, self.n_vocab)
        self._grammar = src
        self._matcher = llg.LLMatcher(self._lltok, src, log_level=0)
        if self._matcher.is_error():
            raise ConstraintError(f"bad grammar: {' '.join(self._matcher.get_error().split())}")
        self._words = (self.n_vocab + 31) // 32
        self._bits = np.zeros(self._words, dtype=np.int32)
        self._start: int | None = None  # len(input_ids) at the first call: the prompt
        self._consumed = 0

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Start over (a new generation with the same grammar)."""
        self._matcher.reset()
        self._start, self._consumed = None, 0

    @property
    def done(self) -> bool:
        """The grammar is complete and nothing may follow but an end-of-generation token."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """What was generated so far is a complete sentence of the grammar (more may still follow)."""
        return bool(self._matcher.is_accepting())

    def accept(self, token: int) -> None:
        """Advance past a sampled ``token``; ``ConstraintError`` if the grammar does not allow it."""
        if not self._matcher.consume_token(int(token)):
            raise ConstraintError(f"token {int(token)} is not allowed here: {self._matcher.get_error()}")

    # -- the mask ------------------------------------------------------------------------
    def _fill(self) -> np.ndarray:
        """llguidance's bitmask of the next step (bit i of word w = token 32 w + i)."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if self._matcher.is_error():
            raise ConstraintError(f"the grammar matcher failed: {self._matcher.get_error()}")
        return self._bits

    def allowed(self) -> np.ndarray:
        """Boolean mask ``[n_vocab]`` of the tokens allowed next."""
        bits = np.unpackbits(self._fill().view(np.uint8), bitorder="little")
        return bits[: self.n_vocab].astype(bool)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` (1-D) with every disallowed token set to -inf (a new float32 array)."""
        x = np.asarray(logits, dtype=np.float32).reshape(-1)
        if x.shape[0] < self.n_vocab:
            raise ValueError(f"logits have {x.shape[0]} entries, the constraint expects {self.n_vocab}")
        if x.shape[0] > self.n_vocab:  # rows past the tokenizer's vocabulary (padded output): never allowed
            out = np.full(x.shape[0], -np.inf, dtype=np.float32)
            out[: self.n_vocab] = self.apply(x[: self.n_vocab])
            return out
        bits = self._fill()
        words = np.flatnonzero(bits)
        if words.size * 4 < bits.size:
            # sparse (the usual case inside JSON syntax): unpack only the non-zero words
            sub = np.unpackbits(bits[words].view(np.uint8), bitorder="little").reshape(words.size, 32)
            rows, col = np.nonzero(sub)
            ids = words[rows] * 32 + col
            ids = ids[ids < self.n_vocab]
            out = np.full(self.n_vocab, -np.inf, dtype=np.float32)
            out[ids] = x[ids]
            return out
        mask = np.unpackbits(bits.view(np.uint8), bitorder="little")[: self.n_vocab].view(bool)
        return np.where(mask, x, np.float32(-np.inf))

    def sync(self, input_ids: Sequence[int] | np.ndarray) -> None:
        """Consume the tokens of ``input_ids`` (prompt + generated) not seen yet; the first call marks the prompt."""
        ids = np.asarray(input_ids).reshape(-1)
        if self._start is None:
            self._start = len(ids)
        new = ids[self._start + self._consumed:]
        for t in new:
            self.accept(int(t))
        self._consumed += len(new)

    def __call__(self, input_ids: Sequence[int] | np.ndarray, logits: np.ndarray) -> np.ndarray:
        """llama-cpp-python's logits processor: consume the tokens generated since the last call, then mask."""
        self.sync(input_ids)
        return self.apply(logits)


def _grammar_text(grammar: Any) -> str | None:
    """GBNF text from a str or from a llama-cpp-python ``LlamaGrammar``-like object (its source attribute)."""
    if grammar is None or isinstance(grammar, str):
        return grammar
    for attr in ("_grammar", "grammar", "grammar_str"):
        text = getattr(grammar, attr, None)
        if isinstance(text, str):
            return text
    raise ConstraintError(f"grammar must be GBNF text, got {type(grammar).__name__}")


def logits_processor(tokenizer: Any, *, grammar: Any = None, response_format: Mapping[str, Any] | None = None,
                     json_schema: Any = None, n_vocab: int | None = None) -> Constraint | None:
    """A fresh ``Constraint`` for one generation, as a logits processor; None when nothing constrains the output
    (no grammar, and ``response_format`` absent or ``{"type": "text"}``). ``grammar`` may be GBNF text or a
    llama-cpp-python ``LlamaGrammar``-like object."""
    text = _grammar_text(grammar)
    if text is None and json_schema is None and grammar_source(response_format=response_format) is None:
        return None
    if text is not None and response_format is not None:
        response_format = None  # llama-cpp-python: an explicit grammar wins over response_format
    return Constraint(tokenizer, grammar=text, response_format=response_format, json_schema=json_schema,
                      n_vocab=n_vocab)


def iter_constrained(model: Any, prompt_ids: Sequence[int], constraint: Constraint, sampler: Any,
                     max_tokens: int, timings: dict[str, float] | None = None
                     ) -> Iterator[tuple[int | None, str, str | None]]:
    """Generate under ``constraint``, one ``model.eval`` per token, from an empty context.

    Yields ``(token, text, None)`` per generated token (``text`` may be empty while a character is incomplete),
    then ``(None, tail, finish)`` with ``finish`` = ``"stop"`` (the grammar completed, or an end-of-generation
    token was drawn where the grammar allowed one) or ``"length"``. ``timings`` (if given) receives ``prompt_s``
    and ``gen_s``. ``sampler`` is a ``tilellm.llm.text.sampling.Sampler``.
    """
    from .tokenizer import StreamDecoder

    t0 = time.perf_counter()
    ids = [int(i) for i in prompt_ids]
    eog = set(model.eog_ids)
    constraint.reset()
    model.reset()
    logits = model.eval(ids)
    t1 = time.perf_counter()
    history = list(ids)
    stream = StreamDecoder(model.tokenizer, skip_special=True)
    finish = "length"
    n = 0
    while n < max_tokens:
        t = sampler.sample(constraint(history, logits), history)
        if t in eog:
            finish = "stop"
            break
        history.append(t)
        n += 1
        yield t, stream.feed(t), None
        constraint.sync(history)
        if constraint.done:
            finish = "stop"
            break
        if n < max_tokens:
            logits = model.eval([t])
    if timings is not None:
        timings["prompt_s"], timings["gen_s"] = t1 - t0, time.perf_counter() - t1
    yield None, stream.flush(), finish


def generate_constrained(model: Any, prompt: str | Sequence[int], constraint: Constraint, *,
                         max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                         min_p: float = 0.05, seed: int | None = None) -> tuple[str, list[int], str]:
    """Generate from ``model`` under ``constraint``: ``(text, token ids, finish)`` (see ``iter_constrained``).

    For callers whose ``Model.generate`` takes no ``logits_processor``; ``prompt`` text is tokenized with BOS (when
    the model adds one) and special-token parsing.
    """
    from .sampling import Sampler

    tok = model.tokenizer
    if isinstance(prompt, str):
        ids = list(tok.encode(prompt, add_bos=bool(getattr(tok, "add_bos", True)), special=True))
    else:
        ids = [int(i) for i in prompt]
    sampler = Sampler(temperature, top_k, top_p, min_p, seed=seed)
    text, out, finish = "", [], "length"
    for t, piece, end in iter_constrained(model, ids, constraint, sampler, max_tokens):
        text += piece
        if t is not None:
            out.append(t)
        if end is not None:
            finish = end
    return text, out, finish
