"""SentencePiece (``tokenizer.ggml.model == "llama"``) tokenizer.

The GGUF vocabulary (pieces, scores, token types) is turned into a SentencePiece ``ModelProto`` —
BPE, byte fallback, identity normalisation, dummy prefix = ``add_space_prefix``, no extra-whitespace
removal — serialized by hand (five small messages; this avoids depending on ``protobuf``) and loaded
into the ``sentencepiece`` C++ library, which does the merging.

Differences from a SentencePiece model as trained, made so that the result follows llama.cpp:
every piece except the unknown piece and the ``<0xXX>`` byte pieces is given type NORMAL, so
SentencePiece may merge into it like llama.cpp does (it looks every text up in one table), and the
special-token partition / BOS / EOS handling is ours (``Tokenizer.encode``). Each text fragment is
encoded separately with the dummy prefix, which is exactly llama.cpp's rule (a space is prefixed to
the first fragment and to every fragment that follows a special token).
"""
from __future__ import annotations

import struct
from typing import Any, Mapping

import numpy as np

from tilellm.quant.errors import GGUFError

from ..gguf.metadata import num_array
from .tokenizer import Tokenizer, TokenType

__all__ = ["SPMTokenizer", "build_model_proto"]

_SPACE = "\u2581"  # ▁

# SentencePiece enums
_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_USER_DEFINED, _SP_UNUSED, _SP_BYTE = 1, 2, 3, 4, 5, 6
_SP_MODEL_BPE = 2


# --------------------------------------------------------------------- minimal protobuf writer
def _varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64  # int32/int64 negatives are 10-byte varints
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _f_varint(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(v)


def _f_bytes(field: int, data: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(data)) + data


def _f_float(field: int, v: float) -> bytes:
    return _varint((field << 3) | 5) + struct.pack("<f", v)


def build_model_proto(pieces: list[str], scores: np.ndarray, sp_types: list[int], *, unk_id: int,
                      bos_id: int, eos_id: int, add_dummy_prefix: bool, byte_fallback: bool) -> bytes:
    """Serialize a SentencePiece BPE ``ModelProto``.

    Fields (sentencepiece_model.proto): ModelProto{1: pieces, 2: trainer_spec, 3: normalizer_spec};
    SentencePiece{1: piece, 2: score, 3: type}; TrainerSpec{3: model_type, 4: vocab_size,
    25: split_digits, 26: allow_whitespace_only_pieces, 35: byte_fallback, 40..43: unk/bos/eos/pad id};
    NormalizerSpec{1: name, 3: add_dummy_prefix, 4: remove_extra_whitespaces, 5: escape_whitespaces}.
    """
    out = bytearray()
    for p, s, t in zip(pieces, scores.tolist(), sp_types):
        body = _f_bytes(1, p.encode("utf-8")) + _f_float(2, s) + _f_varint(3, t)
        out += _f_bytes(1, body)
    trainer = (_f_varint(3, _SP_MODEL_BPE) + _f_varint(4, len(pieces)) + _f_varint(25, 1)
               + _f_varint(26, 1) + _f_varint(35, int(byte_fallback)) + _f_varint(40, unk_id)
               + _f_varint(41, bos_id) + _f_varint(42, eos_id) + _f_varint(43, -1))
    out += _f_bytes(2, trainer)
    normalizer = (_f_bytes(1, b"identity") + _f_varint(3, int(add_dummy_prefix)) + _f_varint(4, 0)
                  + _f_varint(5, 1))
    out += _f_bytes(3, normalizer)
    return bytes(out)


def _byte_of_piece(text: str) -> int | None:
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
        try:
            return int(text[3:5], 16)
        except ValueError:
            return None
    return None


class SPMTokenizer(Tokenizer):
    """SentencePiece BPE tokenizer for ``tokenizer.ggml.model == "llama"`` vocabularies."""

    model = "llama"

    def __init__(self, md: Mapping[str, Any]) -> None:
        super().__init__(md, default_add_bos=True, default_add_space_prefix=True, clean_spaces=False,
                         pre="default", default_ids={"bos": 1, "eos": 2, "unknown": 0})
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - declared dependency
            raise ImportError("the 'sentencepiece' package is needed for SentencePiece GGUF vocabularies") from e
        n = len(self.tokens)
        raw_scores = md.get("tokenizer.ggml.scores")
        if raw_scores is None:
            scores = np.zeros(n, dtype=np.float32)
        else:
            with np.errstate(over="ignore"):
                scores = num_array(md, "tokenizer.ggml.scores", n).astype(np.float32)
            if not np.isfinite(scores).all():  # finite as float64, but not as the float32 SentencePiece keeps
                raise GGUFError("metadata 'tokenizer.ggml.scores' has entries beyond float32's range")
        self.scores: np.ndarray = scores

        # byte pieces: id of each <0xXX> BYTE token
        self._byte_ids: dict[int, int] = {}
        for i in np.flatnonzero(self.token_types == TokenType.BYTE).tolist():
            b = _byte_of_piece(self.tokens[i])
            if b is not None:
                self._byte_ids.setdefault(b, i)
        byte_fallback = len(self._byte_ids) == 256

        unk = self.unk_id if self.unk_id is not None else 0
        pieces = list(self.tokens)
        sp_types = [_SP_NORMAL] * n
        for i in self._byte_ids.values():
            if byte_fallback:
                sp_types[i] = _SP_BYTE
        sp_types[unk] = _SP_UNKNOWN
        # SentencePiece rejects duplicate pieces; llama.cpp maps a duplicated text to its last id,
        # so earlier duplicates get a placeholder that no text can produce.
        for i, t in enumerate(pieces):
            if self.token_to_id[t] != i:
                pieces[i] = f"\U0010fffedup{i}\U0010fffe"
                sp_types[i] = _SP_UNUSED
        if sp_types[unk] != _SP_UNKNOWN:  # the unk text was duplicated: keep the unk id unknown anyway
            sp_types[unk] = _SP_UNKNOWN
        proto = build_model_proto(pieces, scores, sp_types, unk_id=unk, bos_id=-1, eos_id=-1,
                                  add_dummy_prefix=self.add_space_prefix, byte_fallback=byte_fallback)
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError with its status text
            raise GGUFError(f"cannot build a SentencePiece model from this vocabulary: {e}") from e
        self._sp = sp

    def _encode_fragment(self, text: str, out: list[int]) -> None:
        out.extend(self._sp.EncodeAsIds(text))

    def _normal_piece(self, token_id: int) -> bytes:
        text = self.tokens[token_id]
        if self.token_types[token_id] == TokenType.BYTE:
            b = _byte_of_piece(text)
            if b is not None:
                return bytes((b,))
        return text.replace(_SPACE, " ").encode("utf-8")
