"""Byte-level BPE (``tokenizer.ggml.model == "gpt2"``): LLaMA-3, Qwen2, DeepSeek and GPT-2 style vocabularies.

Encoding a text fragment (special tokens are split out beforehand by ``Tokenizer.encode``):

1. pre-tokenize with the regex sequence of ``tokenizer.ggml.pre``: each regex splits every current
   piece into its matches and the text between them, so later regexes refine earlier splits;
2. map each piece's UTF-8 bytes to GPT-2's printable byte alphabet (``Ġ`` = space, ``Ċ`` = newline);
3. if the pre-tokenizer ignores merges (``llama-bpe``) and the whole piece is a token, emit it;
4. otherwise merge adjacent symbols, lowest merge rank first (leftmost on ties), and emit the ids.

Pieces are cached, so typical text costs a dictionary lookup per word.
"""
from __future__ import annotations

import heapq
from typing import Any, Mapping

from tilellm.quant.errors import GGUFError, UnsupportedError

from ..gguf.metadata import as_list, as_str
from .tokenizer import Tokenizer

__all__ = ["BPETokenizer", "PRETOKENIZERS", "bytes_to_unicode"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the other 68
    bytes (controls, space, DEL, NBSP, soft hyphen ...) take the characters U+0100, U+0101, ... in byte order.
    """
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
_BYTE_CHARS = [_BYTE_TO_CHAR[b] for b in range(256)]

# --------------------------------------------------------------------- pre-tokenizer regexes
# Written from the behaviour described for each llama.cpp pre-tokenizer type (REFERENCE §6.2).
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
# LLaMA-3: contractions (any case); letters with at most one leading non-letter/digit/newline char;
# digit runs cut into 1-3; optional space + punctuation/symbol run + newlines; whitespace ending in
# newlines; whitespace not followed by a non-space; any other whitespace.
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2: the same with single digits.
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# GPT-2: lower-case contractions, optional space + letters / numbers / other, trailing whitespace.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# DeepSeek-V3: digits in 1-3, CJK ideographs + kana runs, then a GPT-4-like pattern: one ASCII
# punctuation char + ASCII letters, letters with marks, space + punctuation/symbols + newlines, whitespace.
_DSV3 = (
    r"\p{N}{1,3}",
    r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
# DeepSeek-LLM's explicit class of cased letters (Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee,
# Glagolitic, Coptic, full-width, Deseret, Osage, Old Hungarian, Warang Citi, Adlam ...).
_DS_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943"
)
_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# DeepSeek-LLM: each CR/LF; optional whitespace + cased letters; optional whitespace + ASCII/full-width
# punctuation; trailing whitespace; CJK/Hangul runs; digit runs.
_DS_LLM = (
    r"[\r\n]",
    r"\s?[" + _DS_LETTERS + r"]+",
    r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    r"\s+\Z",
    _CJK_HANGUL,
    r"\p{N}+",
)
# DeepSeek-Coder: each CR/LF; optional whitespace + letters; optional whitespace + punctuation;
# CJK/Hangul runs; single digits.
_DS_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}")
# llama.cpp's "default" BPE pre-tokenizer: punctuation runs first, then GPT-2, then digit splits.
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")


class _Pre:
    def __init__(self, patterns: tuple[str, ...], *, clean_spaces: bool, ignore_merges: bool = False,
                 add_bos: bool = False) -> None:
        self.patterns = patterns
        self.clean_spaces = clean_spaces
        self.ignore_merges = ignore_merges
        self.add_bos = add_bos


_LLAMA3_PRE = _Pre((_LLAMA3,), clean_spaces=True, ignore_merges=True, add_bos=True)
_QWEN2_PRE = _Pre((_QWEN2,), clean_spaces=False)

#: ``tokenizer.ggml.pre`` name -> pre-tokenizer settings (regexes, detokenizer clean-up, ignore_merges,
#: default add_bos), following the settings llama.cpp uses for the same names.
PRETOKENIZERS: dict[str, _Pre] = {
    "llama-bpe": _LLAMA3_PRE,
    "llama3": _LLAMA3_PRE,
    "llama-v3": _LLAMA3_PRE,
    "qwen2": _QWEN2_PRE,
    "deepseek-r1-qwen": _QWEN2_PRE,
    "deepseek-llm": _Pre(_DS_LLM, clean_spaces=False),
    "deepseek-coder": _Pre(_DS_CODER, clean_spaces=False),
    "deepseek-v3": _Pre(_DSV3, clean_spaces=False),
    "gpt-2": _Pre((_GPT2,), clean_spaces=True),
    # each digit alone, then GPT-2's split (llama.cpp's STARCODER / REFACT / SMOLLM)
    "smollm": _Pre((r"\p{N}", _GPT2), clean_spaces=False),
    "refact": _Pre((r"\p{N}", _GPT2), clean_spaces=True),
    "starcoder": _Pre((r"\p{N}", _GPT2), clean_spaces=True),
    "default": _Pre(_DEFAULT, clean_spaces=True),
}

_CACHE_LIMIT = 1 << 17


class BPETokenizer(Tokenizer):
    """Byte-level BPE tokenizer for ``tokenizer.ggml.model == "gpt2"`` vocabularies."""

    model = "gpt2"

    def __init__(self, md: Mapping[str, Any]) -> None:
        pre_name = as_str(md.get("tokenizer.ggml.pre", "default"), "tokenizer.ggml.pre")
        pre = PRETOKENIZERS.get(pre_name)
        if pre is None:
            raise UnsupportedError(
                f"unsupported BPE pre-tokenizer {pre_name!r} (tokenizer.ggml.pre); supported: "
                + ", ".join(sorted(PRETOKENIZERS)))
        super().__init__(md, default_add_bos=pre.add_bos, default_add_space_prefix=False,
                         clean_spaces=pre.clean_spaces, pre=pre_name)
        self.ignore_merges = pre.ignore_merges
        import regex  # here, not at import: SentencePiece models (and the ARM test rootfs) need no `regex`

        self._regexes = [regex.compile(p) for p in pre.patterns]

        raw = md.get("tokenizer.ggml.merges")
        if raw is None:
            raise GGUFError("GGUF has no tokenizer.ggml.merges (required for a gpt2 BPE vocabulary)")
        ranks: dict[tuple[str, str], int] = {}
        for rank, m in enumerate(as_list(raw, "tokenizer.ggml.merges")):
            m = as_str(m, f"tokenizer.ggml.merges[{rank}]")
            sep = m.find(" ", 1)
            if sep < 0:
                raise GGUFError(f"malformed BPE merge #{rank}: {m!r} (expected 'left right')")
            ranks.setdefault((m[:sep], m[sep + 1:]), rank)
        self._ranks = ranks
        self._cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ encoding
    def pretokenize(self, text: str) -> list[str]:
        """Split ``text`` into pre-tokens (before the byte mapping)."""
        pieces = [text]
        for rx in self._regexes:
            out: list[str] = []
            for piece in pieces:
                pos = 0
                for m in rx.finditer(piece):
                    s, e = m.span()
                    if s == e:
                        continue
                    if s > pos:
                        out.append(piece[pos:s])
                    out.append(piece[s:e])
                    pos = e
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces

    def _encode_fragment(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for piece in self.pretokenize(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._encode_piece(piece)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        word = "".join([_BYTE_CHARS[b] for b in piece.encode("utf-8")])
        vocab = self.token_to_id
        if self.ignore_merges:
            i = vocab.get(word)
            if i is not None:
                return (i,)
        symbols = self._merge(list(word)) if len(word) <= 48 else self._merge_long(list(word))
        ids: list[int] = []
        for s in symbols:
            i = vocab.get(s)
            if i is not None:
                ids.append(i)
            else:  # a merge product missing from the vocabulary: fall back to its characters
                ids.extend(vocab[c] for c in s if c in vocab)
        return tuple(ids)

    def _merge(self, syms: list[str]) -> list[str]:
        ranks = self._ranks
        while len(syms) > 1:
            best = -1
            best_rank = 1 << 62
            for i in range(len(syms) - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None and r < best_rank:
                    best_rank = r
                    best = i
            if best < 0:
                break
            syms[best:best + 2] = [syms[best] + syms[best + 1]]
        return syms

    def _merge_long(self, syms: list[str]) -> list[str]:
        """Same result as ``_merge`` in O(n log n): a heap of (rank, left index) over a linked list."""
        ranks = self._ranks
        n = len(syms)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None:
                heap.append((r, i, syms[i], syms[i + 1]))
        heapq.heapify(heap)
        while heap:
            r, i, left, right = heapq.heappop(heap)
            j = nxt[i] if i < n else n
            if not alive[i] or j >= n or syms[i] != left or syms[j] != right:
                continue  # stale entry
            syms[i] = left + right
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            p = prv[i]
            if p >= 0:
                rp = ranks.get((syms[p], syms[i]))
                if rp is not None:
                    heapq.heappush(heap, (rp, p, syms[p], syms[i]))
            k = nxt[i]
            if k < n:
                rk = ranks.get((syms[i], syms[k]))
                if rk is not None:
                    heapq.heappush(heap, (rk, i, syms[i], syms[k]))
        return [s for s, a in zip(syms, alive) if a]

    # ------------------------------------------------------------------ decoding
    def _normal_piece(self, token_id: int) -> bytes:
        out = bytearray()
        for ch in self.tokens[token_id]:
            b = _CHAR_TO_BYTE.get(ch)
            if b is not None:
                out.append(b)
            else:  # not a byte-level character: keep its UTF-8 bytes
                out += ch.encode("utf-8")
        return bytes(out)
