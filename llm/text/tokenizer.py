"""Tokenizers for GGUF models, with llama.cpp's behaviour as the reference.

``load_tokenizer(metadata)`` (text/factory.py) reads the ``tokenizer.ggml.*`` keys of a GGUF file and returns a
tokenizer for its model type:

* ``"llama"``: SentencePiece BPE over scored pieces (LLaMA-1/2, Mistral, ...), see ``spm.py``;
* ``"gpt2"``: byte-level BPE with ranked merges and a regex pre-tokenizer chosen by
  ``tokenizer.ggml.pre`` (LLaMA-3, Qwen2, DeepSeek, ...), see ``bpe.py``.

What is shared lives here: token attributes, the special-token partition of the input text
(``special=True``), end-of-generation ids, and detokenization following llama.cpp's
``llama_detokenize`` / ``llama_token_to_piece`` rules (leading-space removal, hidden control tokens,
``clean_spaces``), plus ``StreamDecoder`` for incremental output.
"""
from __future__ import annotations

import codecs
import re
from enum import IntEnum
from typing import Any, Iterable, Mapping

import numpy as np

from tilellm.quant.errors import GGUFError, UnsupportedError

from ..gguf.metadata import as_list, as_str, bool_of, int_in, num_array

__all__ = ["TokenType", "Tokenizer", "StreamDecoder"]


class TokenType(IntEnum):
    """Token types as stored in ``tokenizer.ggml.token_type`` (SentencePiece numbering)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = (
    int(TokenType.NORMAL), int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.USER_DEFINED),
    int(TokenType.BYTE))

# Texts llama.cpp treats as end-of-turn markers even when the metadata does not name them
# (its vocabulary loader looks them up by text). The first group also serves as the EOT id when
# ``tokenizer.ggml.eot_token_id`` is missing.
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>",
)
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
))

_KEY = "tokenizer.ggml."

# llama.cpp's clean_spaces passes (the old HF ``clean_up_tokenization_spaces``), applied in order:
# drop the space before ? ! . ,  ->  " ' " becomes "'"  ->  drop the space before 's 'm 're 've.
_CLEAN_PASSES = (
    (re.compile(r" (?=[?!.,])"), ""),
    (re.compile(r" ' "), "'"),
    (re.compile(r" (?='[sm]|'re|'ve)"), ""),
)


def _clean_spaces(text: str) -> str:
    for pattern, repl in _CLEAN_PASSES:
        text = pattern.sub(repl, text)
    return text


def _fresh_cut(text: str, lookback: int = 8) -> int:
    """The largest cut ``p`` (within ``lookback`` of the end) where no clean-up pattern can straddle.

    At such a cut ``_clean_spaces(text) == _clean_spaces(text[:p]) + _clean_spaces(text[p:])`` whatever
    follows: the character before the cut is not a space or an apostrophe (passes 1 and 2 match only
    across a space or an apostrophe), and after passes 1-2 the text before the cut does not end in
    `` 'r`` / `` 'v`` (pass 3 could still complete `` 're`` / `` 've``). Returns 0 if there is none.
    """
    for p in range(len(text), max(0, len(text) - lookback), -1):
        if text[p - 1] in " '":
            continue
        if text[p - 1] in "rv":
            head = text[:p]
            for pattern, repl in _CLEAN_PASSES[:2]:
                head = pattern.sub(repl, head)
            if head[-3:-1] == " '":
                continue
        return p
    return 0


class Tokenizer:
    """A GGUF tokenizer: text <-> token ids with llama.cpp's semantics.

    Build one with ``load_tokenizer(metadata)`` (text/factory.py). Subclasses implement ``_encode_fragment``
    (plain text, no special tokens) and ``_normal_piece`` (the bytes of a NORMAL token).

    Attributes:
        model: ``tokenizer.ggml.model`` (``"llama"`` or ``"gpt2"``).
        pre: the pre-tokenizer name (``tokenizer.ggml.pre``; ``"default"`` for SentencePiece).
        tokens: token texts, index = id.
        token_types: ``TokenType`` value per id (after llama.cpp's EOG overrides).
        bos_id, eos_id, eot_id, eom_id, unk_id, pad_id: special ids or ``None``.
        eog_ids: ids that end generation (EOS, EOT, EOM and known end-of-turn tokens).
        add_bos, add_eos: whether ``encode`` adds BOS / EOS by default.
        add_space_prefix: SentencePiece dummy-prefix space (also drives detokenization).
        clean_spaces: llama.cpp's detokenizer space clean-up (``llama-bpe``, ``gpt-2``, ``default``).
    """

    model: str = ""

    def __init__(self, md: Mapping[str, Any], *, default_add_bos: bool, default_add_space_prefix: bool,
                 clean_spaces: bool, pre: str,
                 default_ids: Mapping[str, int | None] | None = None) -> None:
        raw_tokens = md.get(_KEY + "tokens")
        if raw_tokens is None:
            raise GGUFError("GGUF has no tokenizer.ggml.tokens (cannot find the tokenizer vocabulary)")
        tokens = [as_str(t, _KEY + "tokens") for t in as_list(raw_tokens, _KEY + "tokens")]
        n = len(tokens)
        if n == 0:
            raise GGUFError("tokenizer.ggml.tokens is empty")
        # llama.cpp renames empty tokens so they can never match text
        for i, t in enumerate(tokens):
            if t == "":
                tokens[i] = f"[EMPTY_{i}]"
        self.tokens: list[str] = tokens
        self.pre = pre

        types = md.get(_KEY + "token_type")
        if types is None:
            tt = np.full(n, TokenType.NORMAL, dtype=np.int32)
        else:
            tt = num_array(md, _KEY + "token_type", n, integer=True)
            tt = np.where((tt >= 0) & (tt <= 6), tt, TokenType.UNDEFINED).astype(np.int32)
        self.token_types: np.ndarray = tt

        # text -> id; like llama.cpp the last of duplicate texts wins
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}

        def get_id(name: str) -> int | None:
            key = f"{_KEY}{name}_token_id"
            default = (default_ids or {}).get(name)
            if key not in md:
                return default
            v = int_in(md, key)
            if not 0 <= v < n:
                # llama.cpp warns and keeps the default
                return default if default is not None and 0 <= default < n else None
            return v

        self.bos_id: int | None = get_id("bos")
        self.eos_id: int | None = get_id("eos")
        self.eot_id: int | None = get_id("eot")
        self.eom_id: int | None = get_id("eom")
        self.unk_id: int | None = get_id("unknown")
        self.pad_id: int | None = get_id("padding")

        def get_flag(name: str, default: bool) -> bool:
            key = _KEY + name
            return bool_of(md, key, default)

        self.add_bos: bool = get_flag("add_bos_token", default_add_bos)
        self.add_eos: bool = get_flag("add_eos_token", False)
        self.add_space_prefix: bool = get_flag("add_space_prefix", default_add_space_prefix)
        self.clean_spaces: bool = clean_spaces
        if self.add_bos and self.bos_id is None:
            raise GGUFError("tokenizer adds BOS (add_bos_token) but has no valid bos_token_id")
        if self.add_eos and self.eos_id is None:
            raise GGUFError("tokenizer adds EOS (add_eos_token) but has no valid eos_token_id")

        self._find_eog()
        self._build_special_cache()
        self._pieces_special: dict[int, bytes] = {}
        self._pieces_plain: dict[int, bytes] = {}

    # ------------------------------------------------------------------ construction
    def _find_eog(self) -> None:
        tt = self.token_types
        n = len(self.tokens)
        if self.eot_id is None:
            for text in _EOT_TEXTS:
                i = self.token_to_id.get(text)
                if i is not None:
                    self.eot_id = i
                    break
        if self.eom_id is None:
            self.eom_id = self.token_to_id.get("<|eom_id|>")
        eog = {self.token_to_id[t] for t in _EOG_TEXTS if t in self.token_to_id}
        # llama.cpp forces these "control-looking" tokens to CONTROL (a converter bug otherwise)
        forced = set(eog)
        for i in (self.eot_id, self.eom_id):
            if i is not None and self.tokens[i] in _EOT_TEXTS + ("<|eom_id|>",):
                forced.add(i)
        for i in forced:
            if tt[i] != TokenType.CONTROL:
                tt[i] = TokenType.CONTROL
        eog.update(i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None and 0 <= i < n)
        self.eog_ids: frozenset[int] = frozenset(eog)

    def _build_special_cache(self) -> None:
        special = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
        ids = [i for i in np.flatnonzero(np.isin(self.token_types, special)).tolist()]
        # longest first (ties: lower id first, deterministic)
        ids.sort(key=lambda i: (-len(self.tokens[i]), i))
        self._special_all: list[tuple[int, str]] = [(i, self.tokens[i]) for i in ids]
        self._special_user: list[tuple[int, str]] = [
            (i, t) for i, t in self._special_all if self.token_types[i] == TokenType.USER_DEFINED]

    # ------------------------------------------------------------------ properties
    @property
    def n_vocab(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.tokens)

    def is_control(self, token_id: int) -> bool:
        """True for CONTROL tokens (BOS, EOS, chat markers): hidden unless special pieces are requested."""
        return self.token_types[token_id] == TokenType.CONTROL

    def is_eog(self, token_id: int) -> bool:
        """True if ``token_id`` ends generation."""
        return token_id in self.eog_ids

    def token_type(self, token_id: int) -> TokenType:
        """The ``TokenType`` of ``token_id``."""
        return TokenType(int(self.token_types[token_id]))

    # ------------------------------------------------------------------ encoding
    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split ``text`` at special-token strings, longest token first (llama.cpp's st_partition).

        USER_DEFINED tokens are always split out; CONTROL and UNKNOWN ones only with ``parse_special``.
        Returns a list of text fragments (non-empty ``str``) and token ids (``int``).
        """
        frags: list[str | int] = [text]
        candidates = self._special_all if parse_special else self._special_user
        for tid, ttext in candidates:
            if ttext not in text:
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or ttext not in f:
                    out.append(f)
                    continue
                pos = 0
                step = len(ttext)
                while True:
                    j = f.find(ttext, pos)
                    if j < 0:
                        break
                    if j > pos:
                        out.append(f[pos:j])
                    out.append(tid)
                    pos = j + step
                if pos < len(f):
                    out.append(f[pos:])
            frags = out
        return frags

    def _encode_fragment(self, text: str, out: list[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False,
               add_eos: bool | None = None) -> list[int]:
        """Tokenize ``text``.

        Args:
            text: the input string.
            add_bos: prepend BOS; ``None`` uses the model's ``add_bos_token``.
            special: parse CONTROL token strings in the text (e.g. ``"<|eot_id|>"``) into their ids,
                like llama.cpp's ``parse_special`` (the default of ``llama-tokenize``). USER_DEFINED
                tokens (e.g. ``<think>``) are split out either way, as llama.cpp does.
            add_eos: append EOS; ``None`` uses the model's ``add_eos_token``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        out: list[int] = []
        if add_bos is None:
            add_bos = self.add_bos
        if add_eos is None:
            add_eos = self.add_eos
        if add_bos:
            if self.bos_id is None:
                raise UnsupportedError("this tokenizer has no BOS token")
            out.append(self.bos_id)
        if text:
            for frag in self._partition(text, special):
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._encode_fragment(frag, out)
        if add_eos:
            if self.eos_id is None:
                raise UnsupportedError("this tokenizer has no EOS token")
            out.append(self.eos_id)
        return out

    # ------------------------------------------------------------------ decoding
    def _normal_piece(self, token_id: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _piece(self, token_id: int, special: bool) -> bytes:
        cache = self._pieces_special if special else self._pieces_plain
        p = cache.get(token_id)
        if p is None:
            t = int(self.token_types[token_id])
            if t == _CONTROL or t == _UNKNOWN:
                p = self.tokens[token_id].encode("utf-8") if special else b""
            elif t == _USER_DEFINED:
                p = self.tokens[token_id].encode("utf-8")
            elif t == _NORMAL or t == _BYTE:
                p = self._normal_piece(token_id)
            else:  # UNUSED / UNDEFINED: rendered as nothing, like llama.cpp
                p = b""
            cache[token_id] = p
        return p

    def token_to_piece(self, token_id: int, special: bool = True, lstrip: int = 0) -> bytes:
        """The bytes of one token (``llama_token_to_piece``).

        Byte tokens give their raw byte (possibly part of a UTF-8 sequence); SentencePiece ``▁`` becomes
        a space; byte-level BPE tokens are mapped back to bytes. CONTROL/UNKNOWN tokens give their text
        when ``special`` is true and ``b""`` otherwise. ``lstrip`` removes up to that many leading spaces.
        """
        token_id = int(token_id)
        if not 0 <= token_id < len(self.tokens):
            raise ValueError(f"token id {token_id} out of range [0, {len(self.tokens)})")
        p = self._piece(token_id, special)
        while lstrip > 0 and p[:1] == b" ":
            p = p[1:]
            lstrip -= 1
        return p

    def detokenize(self, ids: Iterable[int], remove_special: bool = False,
                   unparse_special: bool = False) -> bytes:
        """``llama_detokenize``: the bytes of ``ids``.

        Args:
            remove_special: drop a leading BOS (if the model adds BOS) and a trailing EOS (if it adds EOS).
            unparse_special: render CONTROL tokens as their text instead of hiding them.

        With a SentencePiece dummy prefix the first piece loses one leading space, except when a leading
        BOS was removed. For ``clean_spaces`` tokenizers spaces before punctuation and some
        contractions are removed.
        """
        ids = [int(i) for i in ids]
        n = len(self.tokens)
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} out of range [0, {n})")
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = [self._piece(i, unparse_special) for i in ids]
        if remove_space and parts and parts[0][:1] == b" ":
            parts[0] = parts[0][1:]
        data = b"".join(parts)
        if self.clean_spaces and data:
            # all clean-up patterns are ASCII, so working on the latin-1 view is byte-exact
            data = _clean_spaces(data.decode("latin-1")).encode("latin-1")
        return data

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Decode ``ids`` to text (invalid UTF-8 becomes U+FFFD).

        ``skip_special=False`` renders control tokens as text (HF ``decode``; llama.cpp
        ``unparse_special=true``); ``skip_special=True`` hides them.
        """
        return self.detokenize(ids, remove_special=False, unparse_special=not skip_special).decode(
            "utf-8", errors="replace")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab}, "
                f"bos={self.bos_id}, eos={self.eos_id}, add_bos={self.add_bos})")


class StreamDecoder:
    """Incremental detokenizer: ``feed(id)`` returns the new text, never half a UTF-8 character.

    The concatenation of all ``feed`` results and ``flush()`` equals ``tokenizer.decode(ids,
    skip_special)`` for the same ids (with ``continuation=False``). Incomplete UTF-8 sequences are held
    until completed; bytes that can never become valid UTF-8 are emitted as U+FFFD. For tokenizers
    with ``clean_spaces`` the text after the last point where no clean-up pattern can straddle (usually
    just a trailing space or apostrophe) is held until the following characters decide its fate.

    Args:
        tokenizer: the tokenizer.
        skip_special: hide control tokens (as ``decode(..., skip_special=True)``).
        continuation: the ids continue an earlier sequence (e.g. generated after a prompt), so the first
            piece keeps its leading space instead of losing the SentencePiece dummy-prefix space.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False, continuation: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._first = not continuation
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded text held back for clean_spaces

    def feed(self, token_id: int) -> str:
        """Add one token; return the text that is now final (possibly ``""``)."""
        piece = self.tokenizer.token_to_piece(token_id, special=not self.skip_special)
        if self._first:
            if self.tokenizer.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]
            self._first = False
        text = self._utf8.decode(piece, final=False)
        if not self.tokenizer.clean_spaces:
            return text
        self._pending += text
        p = _fresh_cut(self._pending)
        if p == 0:
            return ""
        ready, self._pending = self._pending[:p], self._pending[p:]
        return _clean_spaces(ready)

    def flush(self) -> str:
        """Return everything still held back (incomplete UTF-8 becomes U+FFFD) and reset."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        if self.tokenizer.clean_spaces:
            text = _clean_spaces(self._pending + text)
            self._pending = ""
        return text
