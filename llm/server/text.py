"""Generated text of one sequence: incremental detokenization and stop strings.

:class:`TextStream` turns sampled token ids into text pieces that are safe to send: never half a
UTF-8 character, never the beginning of a stop string that may still complete. Its output equals
``Model.generate``'s text for the same tokens and stop strings (the stop string and what follows it
are left out).
"""
from __future__ import annotations

from typing import Sequence

from ._compat import TextDecoder

__all__ = ["TextStream"]


def _earliest(text: str, stops: Sequence[str], start: int) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text[start:]``."""
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    """Text of one generated sequence, handed out piece by piece.

    ``feed(token)`` returns the new text that is final (possibly ``""``) and sets :attr:`stopped`
    when a stop string appeared; ``finish()`` returns the rest once generation has ended.
    """

    def __init__(self, decoder: TextDecoder, stops: Sequence[str] = ()) -> None:
        self._decoder = decoder
        self._stops = [s for s in stops if s]
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._text = ""
        self._sent = 0                 # characters of _text already handed out
        self._cut: int | None = None   # where a stop string starts in _text
        self.stopped = False

    @property
    def text(self) -> str:
        """All final text so far (without any stop string)."""
        return self._text[: self._cut] if self._cut is not None else self._text

    def _append(self, piece: str) -> None:
        start = max(0, len(self._text) - self._max_stop + 1)
        self._text += piece
        if self._stops:
            self._cut = _earliest(self._text, self._stops, start)
            self.stopped = self._cut is not None

    def feed(self, token_id: int) -> str:
        """Add one sampled token; the text now safe to send."""
        if self.stopped:
            raise RuntimeError("feed() after a stop string ended the text")
        piece = self._decoder.feed(token_id)
        if not piece:
            return ""
        self._append(piece)
        if self.stopped:
            return ""  # finish() hands out what precedes the stop string
        safe = len(self._text) - (_partial_stop(self._text, self._stops) if self._stops else 0)
        if safe <= self._sent:
            return ""
        out, self._sent = self._text[self._sent:safe], safe
        return out

    def finish(self) -> str:
        """End of generation: the text still held back (up to any stop string)."""
        if self._cut is None:
            tail = self._decoder.flush()
            if tail:
                self._append(tail)
        end = len(self._text) if self._cut is None else self._cut
        out = self._text[self._sent:max(end, self._sent)]
        self._sent = max(end, self._sent)
        return out
