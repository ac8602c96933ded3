"""``llm-run``: generate text from a GGUF model, with llama.cpp's flag spellings.

    llm-run MODEL.gguf -p "Once upon a time" -n 64
    llm-run -m MODEL.gguf -f prompt.txt --temp 0 -r "User:" --backend avx512

The prompt is echoed (like llama.cpp; ``--no-display-prompt`` turns that off), the completion
is streamed to stdout as it is generated, and llama.cpp-style timings go to stderr.

``-n/--n-predict`` (llama.cpp semantics): N > 0 generates at most N tokens; ``-1`` (default) runs
until an end-of-generation token or a full context, and so does ``-2`` (llama.cpp's "until the
context is full": there is no context shift here, so both stop when the context fills); ``0``
only evaluates the prompt. ``-r/--reverse-prompt`` strings stop generation and are not printed.

llama.cpp's multi-letter flags parse as llama.cpp parses them: ``-cnv`` / ``-i`` conversation mode (``/exit``
or end of input quits, Ctrl-C ends the current reply), ``-ngl N`` is accepted and ignored with a note (CPU
engine), ``-tb N`` sets the threads when ``-t`` is not given, ``-hf``, ``-ctk``/``-ctv`` and ``-pg`` are refused
with a one-line reason; ``--chat-template NAME|FILE``, ``--grammar``, ``--grammar-file``, ``--json-schema``
(``-j``), ``--json-schema-file`` (``-jf``), ``--version``, ``-v``, ``--color``, ``--jinja`` and ``-e`` are
understood. The timings on stderr end with the backend, kernel variant and threads used.

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
import warnings
from typing import Any, Iterator, Sequence, TextIO

from .common import EXIT_PIPE, Parser, UsageError, guarded_main

__all__ = ["main", "run_main", "build_parser", "format_timings"]

# No context holds a prompt this long (1M tokens of ~4 bytes each); reading stops there (e.g. -f /dev/zero).
MAX_PROMPT_BYTES = 1 << 26


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
    # allow_abbrev=False: llama.cpp's multi-letter single-dash flags (-ngl, -cnv, -ctk ...) are whole words
    p = Parser(prog="llm-run", description="Generate text with a GGUF model on the CPU (tilellm).", allow_abbrev=False,
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
    p.add_argument("--mirostat", type=_int_arg(0), default=0, metavar="N",
                   help="Mirostat sampling: 0 = off, 1 = Mirostat, 2 = Mirostat 2.0; replaces top-k/top-p/min-p "
                        "(default 0)")
    p.add_argument("--mirostat-lr", type=_float_arg, default=0.1, metavar="N",
                   help="Mirostat learning rate, eta (default 0.1)")
    p.add_argument("--mirostat-ent", type=_float_arg, default=5.0, metavar="N",
                   help="Mirostat target entropy (surprise in bits), tau (default 5.0)")
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
    # conversation
    p.add_argument("-cnv", "--conversation", action="store_true",
                   help="conversation mode: read user turns from stdin, reply with the chat template; "
                        "/exit or end of input quits, Ctrl-C ends the current reply (-p is the system message)")
    p.add_argument("-i", "--interactive", action="store_true", help="the same as -cnv here")
    p.add_argument("--chat-template", default=None, metavar="NAME|FILE",
                   help="a built-in chat format (gemma, llama-3, chatml, ...) or a Jinja template file; implies --chat")
    p.add_argument("--jinja", action="store_true", help="accepted (templates are always rendered with Jinja)")
    # structured output
    g = p.add_argument_group("structured output (one of)")
    g.add_argument("--grammar", default=None, metavar="GBNF", help="constrain the output to a GBNF grammar")
    g.add_argument("--grammar-file", default=None, metavar="FILE", help="read the GBNF grammar from FILE")
    g.add_argument("-j", "--json-schema", default=None, metavar="SCHEMA",
                   help="constrain the output to JSON valid for SCHEMA ('{}' = any JSON object)")
    g.add_argument("-jf", "--json-schema-file", default=None, metavar="FILE", help="read the JSON schema from FILE")
    # llama.cpp flags accepted for compatibility
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="gpu_layers", default=None, metavar="N",
                   help="accepted and ignored: tilellm runs on the CPU")
    p.add_argument("-tb", "--threads-batch", type=_int_arg(1), default=None, metavar="N",
                   help="threads for the prompt (default: -t; one thread pool serves both here)")
    p.add_argument("--color", action="store_true", help="accepted (no colours); --color=on|off|auto too")
    p.add_argument("-e", "--escape", dest="escape", action="store_true", default=True,
                   help="process escapes in -p (the default)")
    p.add_argument("-v", "--verbose", action="store_true", help="print model and run details to stderr")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    # llama.cpp flags with a clear refusal (they would otherwise misparse as -p g, -c tk ...)
    p.add_argument("-hf", "-hfr", "--hf-repo", dest="hf_repo", default=None, metavar="REPO",
                   help="not supported: tilellm runs offline (download the GGUF and pass -m FILE)")
    p.add_argument("-hff", "--hf-file", dest="hf_file", default=None, metavar="FILE", help="not supported (offline)")
    p.add_argument("-ctk", "--cache-type-k", dest="cache_type_k", default=None, metavar="TYPE",
                   help="not supported yet (the KV cache has one type)")
    p.add_argument("-ctv", "--cache-type-v", dest="cache_type_v", default=None, metavar="TYPE",
                   help="not supported yet (the KV cache has one type)")
    p.add_argument("-pg", dest="pg", default=None, metavar="PP,TG", help="an llm-bench flag (not for llm-run)")
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tilellm")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def _check_compat(args: argparse.Namespace, err: TextIO) -> None:
    """Refuse llama.cpp flags that cannot work here; note the ones that are ignored."""
    if args.hf_repo is not None or args.hf_file is not None:
        raise UsageError("-hf/--hf-repo is not supported: tilellm runs offline; download the GGUF and pass -m FILE")
    if args.cache_type_k is not None or args.cache_type_v is not None:
        raise UsageError("-ctk/-ctv (KV cache types) are not supported yet: the KV cache has a single type")
    if args.pg is not None:
        raise UsageError("-pg is an llm-bench flag (prompt + generation test), not an llm-run flag")
    if args.gpu_layers is not None:
        print(f"note: -ngl {args.gpu_layers} ignored: tilellm runs on the CPU", file=err)
    if args.threads_batch is not None and args.threads is None:
        args.threads = args.threads_batch  # one thread pool: -tb alone sets it
    n_structured = sum(x is not None for x in (args.grammar, args.grammar_file, args.json_schema,
                                                   args.json_schema_file))
    if n_structured > 1:
        raise UsageError("give only one of --grammar, --grammar-file, --json-schema, --json-schema-file")


def _structured(args: argparse.Namespace) -> dict[str, Any] | None:
    """The Constraint arguments the structured-output flags ask for (None: unconstrained)."""
    if args.grammar is not None:
        return {"grammar": args.grammar}
    if args.grammar_file is not None:
        with open(args.grammar_file, encoding="utf-8") as f:
            return {"grammar": f.read()}
    text = args.json_schema
    if args.json_schema_file is not None:
        with open(args.json_schema_file, encoding="utf-8") as f:
            text = f.read()
    if text is None:
        return None
    import json

    try:
        schema = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--json-schema is not valid JSON: {e}") from None
    # llama.cpp: '{}' means any JSON object
    return {"json_schema": schema if schema else {"type": "object"}}


def _chat_format(args: argparse.Namespace) -> str | None:
    """--chat-template: a built-in format name, or a file holding a Jinja template."""
    spec = args.chat_template
    if spec is None:
        return None
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            source = f.read()
        if "{{" not in source and "{%" not in source:
            raise UsageError(f"--chat-template file {spec!r} holds no Jinja template")
        return source
    from ..text.chat_formats import CHAT_FORMATS, chat_format_names

    if spec.strip().lower() not in CHAT_FORMATS:
        raise UsageError(f"--chat-template {spec!r} is neither a file nor a built-in format "
                          f"({', '.join(chat_format_names())})")
    return spec


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
    raise UsageError("no prompt: use -p TEXT or -f FILE")


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    """Run ``llm-run`` with ``argv``; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr or open(os.devnull, "w")
    inp = stdin or sys.stdin

    def run(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
        if out is None:  # started with stdout closed (`>&-`): Python leaves sys.stdout None
            raise OSError("stdout is closed: nowhere to write the completion")
        with warnings.catch_warnings():
            # library warnings (e.g. the chat-format fallback) as one 'warning:' line, not Python's two
            warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=err)
            return _run(argv, out, err, inp)

    def interrupted() -> None:
        _ignore_sigint()  # a second Ctrl-C must not cut the clean exit short with a traceback
        try:
            out.write("\n")
            out.flush()
        except (OSError, ValueError, AttributeError):
            pass
    return guarded_main(run, argv, out, err, on_interrupt=interrupted)


def _ignore_sigint() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(argv: Sequence[str] | None, out: TextIO, err: TextIO, inp: TextIO) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # llama.cpp's --color takes an optional on/off/auto; taking any word would swallow a model path
    argv = [a for i, a in enumerate(argv) if not (a.startswith("--color=") or
                                                  (a in ("on", "off", "auto") and i and argv[i - 1] == "--color"))]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # -h / --help printed its text
        return int(e.code or 0)
    if args.version:
        print(f"tilellm {_version()}", file=out)
        return 0
    _check_compat(args, err)
    if args.model and args.model_pos and args.model != args.model_pos:
        raise UsageError(f"two models given: {args.model_pos!r} and -m {args.model!r}")
    conversation = args.conversation or args.interactive
    chat_format = _chat_format(args)
    structured = _structured(args)
    model_path = args.model or args.model_pos
    if not model_path:  # the embedded default (Gemma 3 270M, the 'demo' extra), or a one-line install hint
        from .default_model import default_model_path

        model_path = default_model_path(progress=err)
    prompt = None if conversation and args.prompt is None and args.file is None else _read_prompt(args, inp)
    # validate sampler flags before the (slow) load so a typo fails fast
    from ..text.sampling import SamplingParams

    SamplingParams(args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty, args.repeat_last_n,
                   **_mirostat_kw(args))

    from ..api import load

    t0 = time.perf_counter()
    model = load(model_path, n_ctx=args.ctx_size, n_threads=args.threads, n_batch=args.batch_size,
                 backend=args.backend, seed=None if args.seed < 0 else args.seed)
    load_ms = (time.perf_counter() - t0) * 1e3
    with model:
        if args.verbose:
            print(f"model: {model.desc}, {model.arch}, {model.n_params} parameters, {model.weight_type}, "
                  f"n_ctx {model.n_ctx}, n_vocab {model.n_vocab}", file=err)
            print(_system_line(model, args), file=err)
        constraint = None
        if structured is not None:
            from ..text.constrain import Constraint

            constraint = Constraint(model.tokenizer, n_vocab=model.n_vocab, **structured)
        if conversation:
            return _conversation(model, args, prompt, chat_format, constraint, out, err, inp, load_ms)
        assert prompt is not None
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
                print(_system_line(model, args), file=err)
            return 0
        # generate() checks the arguments and the prompt length before returning the stream,
        # so such errors are reported before anything is printed
        if args.chat or args.system_prompt is not None or chat_format is not None:
            messages = ([{"role": "system", "content": args.system_prompt}] if args.system_prompt else []) + [
                {"role": "user", "content": prompt}]
            prompt_ids: str | list[int] = model.chat_prompt(messages, **_fmt_kw(chat_format))
            display = ""  # the rendered template is not echoed; the reply follows directly
        else:
            prompt_ids, display = prompt, prompt
        stream = _generate(model, args, prompt_ids, constraint)
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
            print(_system_line(model, args), file=err)
    return 0


def _fmt_kw(chat_format: str | None) -> dict[str, Any]:
    return {"chat_format": chat_format} if chat_format is not None else {}


def _system_line(model: Any, args: argparse.Namespace) -> str:
    """Which backend, kernel variant and threads ran (llama.cpp prints its system info likewise)."""
    variant = model.backend
    kind = "reference (numpy)" if variant == "reference" else "kernels"
    return f"system: backend = {kind} (requested {args.backend}), variant = {variant}, threads = {model.n_threads}"


def _mirostat_kw(args: argparse.Namespace) -> dict[str, Any]:
    return dict(mirostat_mode=args.mirostat, mirostat_tau=args.mirostat_ent, mirostat_eta=args.mirostat_lr)


def _generate(model: Any, args: argparse.Namespace, prompt: str | list[int], constraint: Any) -> Iterator[Any]:
    """The chunk stream of one generation; with a constraint, through ``generate``'s ``logits_processor`` when it
    has one, else step by step (``constrain.iter_constrained``)."""
    max_tokens = None if args.n_predict < 0 else args.n_predict
    kw: dict[str, Any] = dict(max_tokens=max_tokens, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                              min_p=args.min_p, repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                              stop=args.reverse_prompt or None, stream=True, ignore_eos=args.ignore_eos,
                              **_mirostat_kw(args))
    if constraint is None:
        return iter(model.generate(prompt, **kw))
    import inspect

    if "logits_processor" in inspect.signature(model.generate).parameters:
        constraint.reset()
        return iter(model.generate(prompt, logits_processor=constraint, **kw))
    return _generate_stepwise(model, args, prompt, constraint, max_tokens)


def _generate_stepwise(model: Any, args: argparse.Namespace, prompt: str | list[int], constraint: Any,
                       max_tokens: int | None) -> Iterator[Any]:
    from ..generation import GenerationChunk, Timings
    from ..text.constrain import iter_constrained
    from ..text.sampling import Sampler

    ids = prompt if isinstance(prompt, list) else model.tokenize(
        prompt, add_bos=bool(getattr(model.tokenizer, "add_bos", True)), special=True)
    if len(ids) >= model.n_ctx:
        from tilellm.quant.errors import ContextOverflowError

        raise ContextOverflowError(f"Requested tokens ({len(ids)}) exceed context window of {model.n_ctx}")
    budget = model.n_ctx - len(ids) if max_tokens is None else min(max_tokens, model.n_ctx - len(ids))
    sampler = Sampler(args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty, args.repeat_last_n,
                      seed=None if args.seed < 0 else args.seed, **_mirostat_kw(args))
    times: dict[str, float] = {}
    n = 0
    for tok, text, finish in iter_constrained(model, ids, constraint, sampler, budget, times):
        n += tok is not None
        timings = None
        if finish is not None:
            p_s, g_s = times.get("prompt_s", 0.0), times.get("gen_s", 0.0)
            timings = Timings(prompt_ms=p_s * 1e3, gen_ms=g_s * 1e3, prompt_tps=len(ids) / p_s if p_s else 0.0,
                              gen_tps=n / g_s if g_s and n else 0.0)
        yield GenerationChunk(text, [tok] if tok is not None else [], finish, len(ids), n, timings)


def _conversation(model: Any, args: argparse.Namespace, system: str | None, chat_format: str | None,
                  constraint: Any, out: TextIO, err: TextIO, inp: TextIO, load_ms: float) -> int:
    """llama.cpp's -cnv: '> ' prompts a user turn; /exit or end of input quits; Ctrl-C ends the current reply
    (Ctrl-C at the prompt quits)."""
    messages: list[dict[str, str]] = []
    system = system if system is not None else args.system_prompt
    if system:
        messages.append({"role": "system", "content": system})
    print("== conversation mode: type /exit (or end the input) to quit; Ctrl-C stops a reply ==", file=err)
    last = None
    while True:
        out.write("\n> ")
        out.flush()
        try:
            line = inp.readline()
        except KeyboardInterrupt:
            break
        if not line or line.strip() == "/exit":
            break
        user = line.rstrip("\n")
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        reply = ""
        try:  # Ctrl-C anywhere in the turn (rendering, prompt, reply) ends the turn
            ids = model.chat_prompt(messages, **_fmt_kw(chat_format))
            for chunk in _generate(model, args, ids, constraint):
                if chunk.text:
                    reply += chunk.text
                    out.write(chunk.text)
                    out.flush()
                last = chunk
        except KeyboardInterrupt:  # ends this reply, not the conversation
            out.write("\n")
        messages.append({"role": "assistant", "content": reply})
    out.write("\n")
    out.flush()
    if args.perf and last is not None and last.timings is not None:
        t = last.timings
        print(format_timings(t.prompt_ms, last.prompt_tokens, t.gen_ms, last.completion_tokens, load_ms), file=err)
        print(_system_line(model, args), file=err)
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
