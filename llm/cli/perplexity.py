"""``llm-perplexity``: perplexity of a text, by llama.cpp's ``llama-perplexity`` method.

The method (so the figures compare with llama.cpp's):
1. tokenize the whole text once, with BOS when the model adds one (no special-token parsing);
2. cut it into ``n_chunk = n_tokens // n_ctx`` non-overlapping chunks of ``n_ctx`` tokens (the tail is
   dropped; at least 2 * n_ctx tokens are required, as llama.cpp requires);
3. evaluate each chunk from an empty context, its first token replaced by BOS (when the model adds BOS);
4. score only the second half: the logits at positions ``n_ctx/2 .. n_ctx-2`` predict tokens
   ``n_ctx/2+1 .. n_ctx-1`` (n_ctx/2 - 1 tokens per chunk), nll = logsumexp(logits) - logit[next];
5. after each chunk print ``[i]ppl`` with the running perplexity exp(mean nll); at the end
   ``Final estimate: PPL = exp(mean nll) +/- ppl * sqrt(var(nll) / (N - 1))``.

    llm-perplexity -m MODEL.gguf -f TEXT.txt [-c 512] [-b 512] [-t N] [--chunks N] [--backend NAME]
    llm-perplexity -m BASE.gguf -f TEXT.txt --kl-divergence-base base.kld             # save the base
    llm-perplexity -m QUANT.gguf -f TEXT.txt --kl-divergence-base base.kld --kl-divergence   # compare

``--kl-divergence`` follows llama.cpp (see ``kld.py``): per chunk the running PPL, ln(PPL(Q)/PPL(base)), mean KL
divergence, RMS Δp and "same top p"; at the end the perplexity, KL-divergence and token-probability statistics.

Without ``-m`` the embedded default model (Gemma 3 270M, the ``demo`` extra) is used.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from tilellm.llm.cli.common import Parser, UsageError, guarded_main

# logits are scored in slices of this many positions (bounds memory with 262k-token vocabularies)
SCORE_SLICE = 128


@dataclass
class PerplexityResult:
    """Running and final figures of one perplexity run."""

    n_ctx: int
    n_chunks: int
    n_tokens_text: int
    n_scored: int = 0
    running: list[float] = field(default_factory=list)  # ppl after each chunk
    nll_sum: float = 0.0
    nll2_sum: float = 0.0
    seconds: float = 0.0

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / self.n_scored)

    @property
    def ppl_error(self) -> float:
        """llama.cpp's uncertainty: ppl times the standard error of the mean nll."""
        n = self.n_scored
        mean = self.nll_sum / n
        var = self.nll2_sum / n - mean * mean
        return self.ppl * math.sqrt(var / (n - 1)) if n > 1 and var > 0 else 0.0


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood (float64) of `targets[i]` under the row `logits[i]`."""
    x = logits.astype(np.float64, copy=False)
    mx = x.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(x - mx).sum(axis=-1)) + mx[:, 0]
    return lse - x[np.arange(x.shape[0]), targets]


def perplexity(model: Any, tokens: Sequence[int], n_ctx: int, bos_id: int | None,
               on_chunk: Callable[[int, PerplexityResult], None] | None = None, n_max_chunks: int | None = None,
               on_logits: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> PerplexityResult:
    """Run llama-perplexity's method over `tokens` (already tokenized, BOS first if the model adds it).

    `model` needs ``reset()`` and ``eval(tokens, logits_all)`` with a context of at least `n_ctx`.
    `bos_id`: the token that replaces each chunk's first token (None: leave chunks as they are).
    `n_max_chunks`: evaluate at most this many chunks (``--chunks``). `on_logits(chunk, logits, targets)` sees every
    scored slice (the KL-divergence mode).
    """
    toks = np.asarray(tokens, dtype=np.int64)
    if n_ctx < 4 or n_ctx % 2:
        raise ValueError(f"n_ctx must be an even number >= 4, got {n_ctx}")
    if toks.size < 2 * n_ctx:
        raise ValueError(f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx} "
                         f"(the text has {toks.size})")
    n_chunks = toks.size // n_ctx
    if n_max_chunks is not None and n_max_chunks > 0:
        n_chunks = min(n_chunks, n_max_chunks)
    first = n_ctx // 2
    res = PerplexityResult(n_ctx=n_ctx, n_chunks=n_chunks, n_tokens_text=int(toks.size))
    t0 = time.perf_counter()
    for c in range(n_chunks):
        chunk = toks[c * n_ctx:(c + 1) * n_ctx].copy()
        if bos_id is not None:
            chunk[0] = bos_id
        model.reset()
        model.eval(chunk[:first].tolist(), logits_all=False)  # context only: no logits needed
        for s in range(first, n_ctx - 1, SCORE_SLICE):
            e = min(n_ctx - 1, s + SCORE_SLICE)
            logits = np.asarray(model.eval(chunk[s:e].tolist(), logits_all=True))
            nll = token_nll(logits, chunk[s + 1:e + 1])
            if on_logits is not None:
                on_logits(c, logits, chunk[s + 1:e + 1])
            res.nll_sum += float(nll.sum())
            res.nll2_sum += float(np.square(nll).sum())
            res.n_scored += int(nll.size)
        res.running.append(res.ppl)
        res.seconds = time.perf_counter() - t0
        if on_chunk is not None:
            on_chunk(c, res)
    return res


def _pos_int(s: str) -> int:
    try:
        v = int(s, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The ``llm-perplexity`` argument parser."""
    p = Parser(prog="llm-perplexity",
                                description="Perplexity of a text file, by llama.cpp's llama-perplexity method.")
    p.add_argument("-m", "--model", help="model file (default: the embedded Gemma 3 270M, the 'demo' extra)")
    p.add_argument("-f", "--file", required=True, help="text file (UTF-8)")
    p.add_argument("-c", "--ctx-size", type=_pos_int, default=512, help="tokens per chunk (default 512, as llama.cpp)")
    p.add_argument("-b", "--batch-size", type=_pos_int, default=512, help="n_batch (default 512)")
    p.add_argument("-t", "--threads", type=_pos_int, default=None, help="threads (default: physical cores)")
    p.add_argument("--chunks", type=_pos_int, default=None, metavar="N", help="evaluate at most N chunks")
    p.add_argument("--kl-divergence-base", default=None, metavar="FILE",
                   help="alone: save the base log-probabilities to FILE; with --kl-divergence: compare with them")
    p.add_argument("--kl-divergence", action="store_true",
                   help="compare this model with the base saved in --kl-divergence-base (KL divergence, Δp, ...)")
    p.add_argument("--backend", default="auto", help="matmul backend: auto, reference, portable, avx2, ...")
    p.add_argument("--numerics", choices=("default", "ggml"), default="default",
                   help="'ggml': llama.cpp's rounding (activation scales per 32/256 values, fp16-table GELU, "
                        "fp16 K/V) to compare with it")
    return p


def _run(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if args.kl_divergence and not args.kl_divergence_base:
        raise UsageError("--kl-divergence needs --kl-divergence-base FILE (a base saved by a run without it)")
    if args.ctx_size < 4 or args.ctx_size % 2:
        raise UsageError(f"-c must be an even number >= 4, got {args.ctx_size}")
    base = None
    if args.kl_divergence:
        from .kld import BaseReader

        base = BaseReader(args.kl_divergence_base)  # a bad file fails before the (slow) load
        if base.n_ctx != args.ctx_size:
            raise ValueError(f"the base was saved with -c {base.n_ctx}; run with the same -c")
    path = args.model
    if not path:
        from .default_model import default_model_path

        path = default_model_path(progress=err)
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    from ..api import load

    model = load(path, n_ctx=args.ctx_size, n_threads=args.threads, n_batch=args.batch_size, backend=args.backend,
                 numerics=args.numerics)
    with model:
        add_bos = bool(getattr(model.tokenizer, "add_bos", True))
        tokens = model.tokenize(text, add_bos=add_bos, special=False)
        bos = getattr(model.tokenizer, "bos_id", None) if add_bos else None
        n_chunks = len(tokens) // args.ctx_size
        if args.chunks:
            n_chunks = min(n_chunks, args.chunks)
        print(f"perplexity: {model.desc} on {model.backend}, {len(tokens)} tokens, calculating perplexity over "
              f"{n_chunks} chunks, n_ctx={args.ctx_size}, batch_size={args.batch_size}", file=err, flush=True)
        on_logits = None
        writer = None
        stats = None
        if base is not None:
            from .kld import KLStats

            used = np.asarray(tokens[:n_chunks * args.ctx_size], dtype=np.int32)
            if base.n_vocab != model.n_vocab or not np.array_equal(base.tokens[:used.size], used) or \
                    base.n_chunks < n_chunks:
                raise ValueError("the base was saved for another text, vocabulary or fewer chunks; "
                                 "use the same -f, the same tokenizer and no more --chunks")
            stats = KLStats()
            print("chunk        PPL  ln(PPL(Q)/PPL(base))  KL Divergence  Δp RMS  Same top p", file=out)

            def compare(c: int, logits: np.ndarray, targets: np.ndarray) -> None:
                assert stats is not None and base is not None
                stats.add(base.take(len(targets)), logits, targets)

            on_logits = compare
        elif args.kl_divergence_base:
            from .kld import BaseWriter

            fh = open(args.kl_divergence_base, "wb")
            writer = BaseWriter(fh, args.ctx_size, model.n_vocab, n_chunks, tokens[:n_chunks * args.ctx_size])

            def save(c: int, logits: np.ndarray, targets: np.ndarray) -> None:
                assert writer is not None
                writer.add(logits)

            on_logits = save

        def show(c: int, r: PerplexityResult) -> None:
            if c == 0:
                print(f"perplexity: {r.seconds:.2f} seconds per pass - ETA {r.seconds * r.n_chunks / 60:.2f} minutes",
                      file=err, flush=True)
            if stats is not None:
                print(stats.chunk_line(c), file=out, flush=True)
            else:
                print(f"[{c + 1}]{r.running[-1]:.4f},", end="", file=out, flush=True)

        try:
            res = perplexity(model, tokens, args.ctx_size, bos, on_chunk=show, n_max_chunks=args.chunks,
                             on_logits=on_logits)
        finally:
            if writer is not None:
                writer.f.close()
    if stats is not None:
        print(file=out)
        stats.report(out)
    else:
        print(file=out)
        print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_error:.5f}", file=out, flush=True)
    if writer is not None:
        print(f"perplexity: saved the base log-probabilities of {res.n_scored} positions to "
              f"{args.kl_divergence_base}", file=err)
    print(f"perplexity: {res.n_scored} tokens scored in {res.seconds:.1f} s", file=err)
    return 0


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run ``llm-perplexity``; errors are one ``error:`` line on stderr and exit status 1."""
    return guarded_main(_run, argv, stdout or sys.stdout, stderr or sys.stderr, interrupted="interrupted")


if __name__ == "__main__":
    sys.exit(main())
