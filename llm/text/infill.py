"""Fill-in-the-middle (infill) tokens: the ids a code model puts around a prefix and a suffix.

A FIM prompt is ``<PRE> prefix <SUF> suffix <MID>`` (or, for "SPM" models, suffix first), and the model writes
the middle. The three ids come from the GGUF as llama.cpp reads them: ``tokenizer.ggml.fim_pre_token_id`` /
``fim_suf_token_id`` / ``fim_mid_token_id`` (older files: ``prefix_token_id`` / ``suffix_token_id`` /
``middle_token_id``), else from the vocabulary's well-known FIM token texts (CodeLlama's ``<PRE>``, Qwen's
``<|fim_prefix|>``, StarCoder's ``<fim_prefix>``, DeepSeek-Coder's ``<｜fim▁begin｜>`` ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["FimTokens", "fim_tokens"]

_KEYS = {"pre": ("fim_pre_token_id", "prefix_token_id"), "suf": ("fim_suf_token_id", "suffix_token_id"),
         "mid": ("fim_mid_token_id", "middle_token_id")}

# token texts llama.cpp recognises when the ids are not in the metadata, per role
_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<\uff5cfim\u2581begin\uff5c>", "<fim_prefix>", "<PRE>", "\u2581<PRE>",
            "<|code_prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<\uff5cfim\u2581hole\uff5c>", "<fim_suffix>", "<SUF>", "\u2581<SUF>",
            "<|code_suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<\uff5cfim\u2581end\uff5c>", "<fim_middle>", "<MID>", "\u2581<MID>",
            "<|code_middle|>"),
}


@dataclass(frozen=True)
class FimTokens:
    """The prefix, suffix and middle token ids (-1 where the model has none)."""

    pre: int = -1
    suf: int = -1
    mid: int = -1

    @property
    def complete(self) -> bool:
        """All three exist: the model can infill."""
        return min(self.pre, self.suf, self.mid) >= 0


def _id(value: Any, n_vocab: int) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= int(value) < n_vocab:
        return int(value)
    return -1


def fim_tokens(metadata: Mapping[str, Any]) -> FimTokens:
    """The FIM ids of a GGUF (its metadata): the explicit keys first, then the known token texts."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab: list[str] = [str(t) for t in tokens] if tokens is not None else []
    index: dict[str, int] | None = None
    found: dict[str, int] = {}
    for role, keys in _KEYS.items():
        ids = [_id(metadata.get(f"tokenizer.ggml.{k}"), len(vocab)) for k in keys]
        tid = next((i for i in ids if i >= 0), -1)
        if tid < 0:
            if index is None:
                wanted = {t for texts in _TEXTS.values() for t in texts}
                index = {}
                for i, t in enumerate(vocab):
                    if t in wanted:
                        index.setdefault(t, i)
            tid = next((index[t] for t in _TEXTS[role] if t in index), -1)
        found[role] = tid
    return FimTokens(found["pre"], found["suf"], found["mid"])
