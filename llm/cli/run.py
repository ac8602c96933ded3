"""``llm-run``: generate text from a GGUF model, with llama.cpp's flag spellings.

    llm-run MODEL.gguf -p "Once upon a time" -n 64
    llm-run -m MODEL.gguf -f prompt.txt --temp 0 -r "User:" --backend avx512

The prompt is echoed (like llama.cpp; ``--no-display-prompt`` turns that off), the completion
is streamed to stdout as it is generated, and llama.cpp-style timings go to stderr.

``-n/--n-predict`` (llama.cpp semantics): N > 0 generates at most N tokens; ``-1`` (default) runs
until an end-of-generation token or a full context, and so does ``-2`` (llama.cpp's "until the
context is full": there is no context shift here, so both stop when the context fills); ``0``
only evaluates the prompt. ``-r/--reverse-prompt`` strings stop generation and are not printed.

Any error (bad file, bad argument, unsupported model) is one ``error: ...`` line on stderr and
exit status 1 (2 for command-line usage errors). Ctrl-C stops generation, ends the line, prints the
timings so far (with ``--perf``) and exits with 130; a second Ctrl-C while it does so is ignored. A prompt
file (``-f``) is read up to ``MAX_PROMPT_BYTES``; a larger one (or an endless one such as /dev/zero) is an
error. A closed stdout is an error before the model is loaded.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any, NoReturn, Sequence, TextIO

__all__ = ["main", "run_main", "build_parser", "format_timings"]

EXIT_ERROR, EXIT_USAGE, EXIT_SIGINT, EXIT_PIPE = 1, 2, 130, 141
# No context holds a prompt this long (1M tokens of ~4 bytes each); reading stops there (e.g. -f /dev/zero).
MAX_PROMPT_BYTES = 1 << 26


class _UsageError(Exception):
    """A command-line mistake (reported as one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block and exits; we want one line and control of the exit
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _int_arg(lo: int | None = None) -> Any:
    def conv(s: str) -> int:
        try:
            v = int(s, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {s!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return conv


def _float_arg(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``llm-run`` argument parser."""
    p = _Parser(prog="llm-run", description="Generate text with a GGUF model on the CPU (tilellm).",
                epilog="-n: -1 (default) = until end of generation or full context; -2 = until the context is full "
                       "(the same here: no context shift); 0 = evaluate the prompt only.")
    p.add_argument("model_pos", nargs="?", metavar="MODEL.gguf", help="model file (or use -m)")
    p.add_argument("-m", "--model", help="model file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", help="prompt text")
    src.add_argument("-f", "--file", help="read the prompt from a file ('-' = stdin)")
    p.add_argument("-n", "--n-predict", type=_int_arg(-2), default=-1, metavar="N",
                   help="tokens to predict (default -1: until end of generation or full context)")
    p.add_argument("-c", "--ctx-size", type=_int_arg(0), default=None, metavar="N",
                   help="context size (default: min(model's, 4096); 0 = the model's)")
    p.add_argument("-t", "--threads", type=_int_arg(1), default=None, metavar="N",
                   help="threads (default: physical cores)")
    p.add_argument("-b", "--batch-size", type=_int_arg(1), default=512, metavar="N",
                   help="prompt tokens per forward pass (default 512)")
    p.add_argument("--temp", type=_float_arg, default=0.8, help="temperature; <= 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=_int_arg(), default=40, help="top-k, 0 = off (default 40)")
    p.add_argument("--top-p", type=_float_arg, default=0.95, help="top-p, 1.0 = off (default 0.95)")
    p.add_argument("--min-p", type=_float_arg, default=0.05, help="min-p, 0 = off (default 0.05)")
    p.add_argument("--repeat-penalty", type=_float_arg, default=1.0, help="repeat penalty, 1.0 = off (default 1.0)")
    p.add_argument("--repeat-last-n", type=_int_arg(), default=64,
                   help="tokens the penalty looks back over; 0 = off, -1 = whole context (default 64)")
    p.add_argument("-s", "--seed", type=_int_arg(-1), default=-1, help="sampling seed, -1 = random (default -1)")
    p.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="TEXT",
                   help="stop when TEXT is generated (repeatable; the text is not printed)")
    p.add_argument("--chat", action="store_true",
                   help="treat the prompt as a user message and apply the model's chat template")
    p.add_argument("-sys", "--system-prompt", default=None, metavar="TEXT",
                   help="system message for --chat (implies --chat)")
    p.add_argument("--ignore-eos", action="store_true", help="never stop at end-of-generation tokens")
    p.add_argument("--backend", default="auto", help="matmul backend: auto, reference, portable, avx2, avx512, ...")
    p.add_argument("--no-display-prompt", dest="display_prompt", action="store_false",
                   help="do not echo the prompt")
    p.add_argument("--no-escape", dest="escape", action="store_false",
                   help="do not process escapes (\\n, \\t, \\\\, ...) in -p")
    p.add_argument("--no-perf", dest="perf", action="store_false", help="do not print timings")
    return p


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "0": "\0"}


def unescape(s: str) -> str:
    """Process the escapes llama.cpp processes in ``-p`` (``\\n``, ``\\t``, ``\\xNN``, ...)."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n in _ESCAPES:
                out.append(_ESCAPES[n])
                i += 2
                continue
            hx = s[i + 2:i + 4]
            if n == "x" and len(hx) == 2 and all(ch in "0123456789abcdefABCDEF" for ch in hx):
                out.append(chr(int(hx, 16)))
                i += 4
                continue
        out.append(c)
        i += 1
    return "".join(out)


def format_timings(prompt_ms: float, n_prompt: int, gen_ms: float, n_gen: int,
                   load_ms: float | None = None) -> str:
    """llama.cpp-style timing lines."""
    def line(label: str, ms: float, n: int) -> str:
        per = ms / n if n else 0.0
        tps = 1e3 * n / ms if n and ms > 0 else 0.0
        return (f"{label} = {ms:10.2f} ms / {n:5d} tokens ({per:8.2f} ms per token, "
                f"{tps:8.2f} tokens per second)")
    lines = []
    if load_ms is not None:
        lines.append(f"       load time = {load_ms:10.2f} ms")
    lines.append(line("prompt eval time", prompt_ms, n_prompt))
    lines.append(line("       eval time", gen_ms, n_gen))
    lines.append(f"      total time = {prompt_ms + gen_ms:10.2f} ms / {n_prompt + n_gen:5d} tokens")
    return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.strerror}: {e.filename}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())  # exactly one line


def _read_prompt(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.prompt is not None:
        return unescape(args.prompt) if args.escape else args.prompt
    if args.file is not None:
        if args.file == "-":
            text = stdin.read(MAX_PROMPT_BYTES + 1)
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read(MAX_PROMPT_BYTES + 1)  # characters: at least as many bytes
        if len(text) > MAX_PROMPT_BYTES:
            raise ValueError(f"prompt file {args.file!r} is longer than {MAX_PROMPT_BYTES} characters "
                             "(no context holds that much)")
        return text
    raise _UsageError("no prompt: use -p TEXT or -f FILE")


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    """Run ``llm-run`` with ``argv``; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr or open(os.devnull, "w")
    inp = stdin or sys.stdin
    try:
        if out is None:  # started with stdout closed (`>&-`): Python leaves sys.stdout None
            raise OSError("stdout is closed: nowhere to write the completion")
        return _run(argv, out, err, inp)
    except _UsageError as e:
        print(f"error: {_one_line(e)}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _ignore_sigint()  # a second Ctrl-C must not cut the clean exit short with a traceback
        try:
            out.write("\n")
            out.flush()
        except (OSError, ValueError):
            pass
        return EXIT_SIGINT
    except BrokenPipeError:
        return EXIT_PIPE
    except Exception as e:  # noqa: BLE001 - the CLI contract: one line, never a traceback
        if os.environ.get("TILELLM_DEBUG"):
            raise
        from tilellm.quant.errors import TileLLMError

        known = isinstance(e, (TileLLMError, OSError, ValueError, UnicodeError))
        prefix = "" if known else f"internal error ({type(e).__name__}): "
        print(f"error: {prefix}{_one_line(e)}", file=err)
        return EXIT_ERROR


def _ignore_sigint() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(argv: Sequence[str] | None, out: TextIO, err: TextIO, inp: TextIO) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # -h / --help printed its text
        return int(e.code or 0)
    if args.model and args.model_pos and args.model != args.model_pos:
        raise _UsageError(f"two models given: {args.model_pos!r} and -m {args.model!r}")
    model_path = args.model or args.model_pos
    if not model_path:  # the embedded default (Gemma 3 270M, the 'demo' extra), or a one-line install hint
        from .default_model import default_model_path

        model_path = default_model_path(progress=err)
    prompt = _read_prompt(args, inp)
    # validate sampler flags before the (slow) load so a typo fails fast
    from ..text.sampling import SamplingParams

    SamplingParams(args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty, args.repeat_last_n)

    from ..api import load

    t0 = time.perf_counter()
    model = load(model_path, n_ctx=args.ctx_size, n_threads=args.threads, n_batch=args.batch_size,
                 backend=args.backend, seed=None if args.seed < 0 else args.seed)
    load_ms = (time.perf_counter() - t0) * 1e3
    with model:
        if args.n_predict == 0:
            ids = model.tokenize(prompt, add_bos=bool(getattr(model.tokenizer, "add_bos", True)), special=True)
            if len(ids) > model.n_ctx:
                from tilellm.quant.errors import ContextOverflowError

                raise ContextOverflowError(f"Requested tokens ({len(ids)}) exceed context window of {model.n_ctx}")
            if args.display_prompt:
                out.write(prompt)
                out.flush()
            t1 = time.perf_counter()
            if ids:
                model.eval(ids)
            prompt_ms = (time.perf_counter() - t1) * 1e3
            out.write("\n")
            out.flush()
            if args.perf:
                print(format_timings(prompt_ms, len(ids), 0.0, 0, load_ms), file=err)
            return 0
        # generate() checks the arguments and the prompt length before returning the stream,
        # so such errors are reported before anything is printed
        if args.chat or args.system_prompt is not None:
            messages = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt else []) + [
                {"role": "user", "content": prompt}]
            prompt_ids: str | list[int] = model.chat_prompt(messages)
            display = ""  # the rendered template is not echoed; the reply follows directly
        else:
            prompt_ids, display = prompt, prompt
        stream = model.generate(
            prompt_ids, max_tokens=None if args.n_predict < 0 else args.n_predict, temperature=args.temp,
            top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
            repeat_last_n=args.repeat_last_n, stop=args.reverse_prompt or None, stream=True,
            ignore_eos=args.ignore_eos)
        if args.display_prompt and display:
            out.write(display)
            out.flush()
        last = None
        t_gen, t_first, n_gen = time.perf_counter(), 0.0, 0
        try:
            for chunk in stream:
                if not t_first:
                    t_first = time.perf_counter()
                n_gen += len(chunk.tokens)
                if chunk.text:
                    out.write(chunk.text)
                    out.flush()
                last = chunk
        except KeyboardInterrupt:
            _ignore_sigint()
            if args.perf:  # the timings so far: the prompt ends where the first token arrives
                now = time.perf_counter()
                first = t_first or now
                n_prompt = last.prompt_tokens if last is not None else 0
                out.write("\n")
                out.flush()
                print(format_timings((first - t_gen) * 1e3, n_prompt, (now - first) * 1e3, n_gen, load_ms), file=err)
            raise
        out.write("\n")
        out.flush()
        if args.perf and last is not None and last.timings is not None:
            t = last.timings
            print(format_timings(t.prompt_ms, last.prompt_tokens, t.gen_ms, last.completion_tokens, load_ms),
                  file=err)
    return 0


def run_main() -> None:
    """Console entry point (``llm-run``)."""
    for stream in (sys.stdout, sys.stderr):
        # a terminal or pipe with a narrow encoding must not turn model output into a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    code = main()
    if code == EXIT_PIPE:
        # stdout is gone (e.g. `| head`): stop Python from complaining again at exit
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    sys.exit(code)


if __name__ == "__main__":
    run_main()
