"""KL divergence against a base model's saved log-probabilities (``llm-perplexity --kl-divergence``).

llama.cpp's method: run the perplexity method once with ``--kl-divergence-base FILE`` to save, for every scored
position, the base model's log-probabilities over the whole vocabulary; then run another model (a quantization)
on the same text with ``--kl-divergence-base FILE --kl-divergence`` to compare, position by position:
KL(base || model) = sum p_base * (log p_base - log p_model), the change of the probability of the correct token
(Δp), whether both agree on the most likely token, and both perplexities.

The file (tilellm's own layout; llama.cpp's is not read): the magic ``TLLMKLD1``, four uint32 (n_ctx, n_vocab,
n_chunks, n_tokens), the int32 tokens of the evaluated chunks, then float32 log-probabilities, one row of n_vocab
per scored position in order. Float32 rows make a model compared with itself give exactly 0.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Sequence, TextIO

import numpy as np

__all__ = ["BaseWriter", "BaseReader", "KLStats", "log_softmax"]

MAGIC = b"TLLMKLD1"
_HEADER = struct.Struct("<8sIIII")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = np.asarray(logits, dtype=np.float64)
    mx = x.max(axis=-1, keepdims=True)
    return x - (np.log(np.exp(x - mx).sum(axis=-1, keepdims=True)) + mx)


class BaseWriter:
    """Writes a base file as the perplexity run scores positions."""

    def __init__(self, f: BinaryIO, n_ctx: int, n_vocab: int, n_chunks: int, tokens: Sequence[int]) -> None:
        self.f = f
        toks = np.asarray(tokens, dtype=np.int32)
        f.write(_HEADER.pack(MAGIC, n_ctx, n_vocab, n_chunks, toks.size))
        f.write(toks.tobytes())

    def add(self, logits: np.ndarray) -> None:
        """Append the log-probabilities of a slice of scored positions."""
        self.f.write(log_softmax(logits).astype(np.float32).tobytes())


class BaseReader:
    """Reads a base file back slice by slice, in the order it was written."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:8] != MAGIC:
            raise ValueError(f"{path} is not a KL-divergence base file (save one with --kl-divergence-base alone)")
        _, self.n_ctx, self.n_vocab, self.n_chunks, n_tok = _HEADER.unpack(head)
        self.tokens = np.fromfile(path, dtype=np.int32, count=n_tok, offset=_HEADER.size)
        off = _HEADER.size + 4 * n_tok
        flat: np.ndarray = np.memmap(path, dtype=np.float32, mode="r", offset=off) if _size(path) > off else \
            np.zeros(0, np.float32)
        if flat.size % max(1, self.n_vocab):
            raise ValueError(f"{path} is truncated")
        self.rows: np.ndarray = flat.reshape(-1, self.n_vocab)
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` rows of log-probabilities."""
        if self.pos + n > self.rows.shape[0]:
            raise ValueError("the KL-divergence base file has fewer scored positions than this run")
        out = np.asarray(self.rows[self.pos:self.pos + n], dtype=np.float64)
        self.pos += n
        return out


def _size(path: str) -> int:
    return os.path.getsize(path)


@dataclass
class KLStats:
    """Per-token figures of a comparison, accumulated slice by slice."""

    kld: list[float] = field(default_factory=list)
    nll_q: list[float] = field(default_factory=list)
    nll_base: list[float] = field(default_factory=list)
    dp: list[float] = field(default_factory=list)
    same_top: list[bool] = field(default_factory=list)

    def add(self, base_logp: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
        """Compare one slice: ``base_logp`` [n, V] saved log-probs, ``logits`` [n, V] of this model."""
        # rounded to float32 as the base was stored, so the same model compares exactly equal
        q = log_softmax(logits).astype(np.float32).astype(np.float64)
        p = np.exp(base_logp)
        kl = (p * (base_logp - q)).sum(axis=-1)
        rows = np.arange(len(targets))
        self.kld += np.maximum(kl, 0.0).tolist()  # rounding can leave -1e-17
        self.nll_q += (-q[rows, targets]).tolist()
        self.nll_base += (-base_logp[rows, targets]).tolist()
        self.dp += (np.exp(q[rows, targets]) - p[rows, targets]).tolist()
        self.same_top += (q.argmax(axis=-1) == base_logp.argmax(axis=-1)).tolist()

    def chunk_line(self, chunk: int) -> str:
        """llama.cpp's per-chunk row: running PPL, ln(PPL(Q)/PPL(base)), KLD, Δp RMS, same top p."""
        nq, nb = np.array(self.nll_q), np.array(self.nll_base)
        kl, dp, st = np.array(self.kld), np.array(self.dp), np.array(self.same_top, dtype=np.float64)
        return (f"{chunk + 1:4d} {math.exp(nq.mean()):10.4f} {float((nq - nb).mean()):10.5f} "
                f"{float(kl.mean()):10.6f} {100 * math.sqrt(float((dp * dp).mean())):8.3f} % "
                f"{100 * float(st.mean()):8.3f} %")

    def report(self, out: TextIO) -> None:
        """The final statistics, in llama.cpp's layout."""
        nq, nb = np.array(self.nll_q), np.array(self.nll_base)
        kl, dp, st = np.array(self.kld), np.array(self.dp), np.array(self.same_top, dtype=np.float64)
        n = kl.size

        def err(x: np.ndarray) -> float:
            return float(x.std() / math.sqrt(n - 1)) if n > 1 else 0.0

        ppl_q, ppl_b = math.exp(nq.mean()), math.exp(nb.mean())
        cor = float(np.corrcoef(nq, nb)[0, 1]) if n > 1 and nq.std() > 0 and nb.std() > 0 else 1.0
        print("====== Perplexity statistics ======", file=out)
        print(f"Mean PPL(Q)                   : {ppl_q:10.6f}", file=out)
        print(f"Mean PPL(base)                : {ppl_b:10.6f}", file=out)
        print(f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * cor:6.2f}%", file=out)
        print(f"Mean ln(PPL(Q)/PPL(base))     : {float((nq - nb).mean()):10.6f} ± {err(nq - nb):10.6f}", file=out)
        print(f"Mean PPL(Q)/PPL(base)         : {ppl_q / ppl_b:10.6f}", file=out)
        print(f"Mean PPL(Q)-PPL(base)         : {ppl_q - ppl_b:10.6f}", file=out)
        print("", file=out)
        print("====== KL divergence statistics ======", file=out)
        print(f"Mean    KLD: {float(kl.mean()):10.6f} ± {err(kl):10.6f}", file=out)
        for label, q in (("Maximum", 100.0), ("99.9%  ", 99.9), ("99.0%  ", 99.0), ("Median ", 50.0),
                         ("10.0%  ", 10.0), (" 5.0%  ", 5.0), (" 1.0%  ", 1.0), ("Minimum", 0.0)):
            print(f"{label} KLD: {float(np.percentile(kl, q)):10.6f}", file=out)
        print("", file=out)
        print("====== Token probability statistics ======", file=out)
        print(f"Mean    Δp: {100 * float(dp.mean()):7.3f} ± {100 * err(dp):5.3f} %", file=out)
        print(f"RMS Δp    : {100 * math.sqrt(float((dp * dp).mean())):7.3f} %", file=out)
        same = float(st.mean())
        same_err = math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0
        print(f"Same top p: {100 * same:7.3f} ± {100 * same_err:5.3f} %", file=out)
