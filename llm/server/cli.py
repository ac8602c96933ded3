"""``llm-server``: serve a GGUF model over an OpenAI-compatible HTTP API (llama-server's flag spellings).

    llm-server -m model.gguf --port 8080 -np 4
    python -m tilellm.llm.server -m model.gguf --api-key "$KEY"

Binds 127.0.0.1 unless ``--host`` says otherwise. The model is fixed at start (no request can name a
file). Without ``-m`` it serves the embedded Gemma 3 270M (``pip install 'tilellm[demo]'``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn, Sequence

__all__ = ["main", "build_parser", "build_server"]

API_KEY_ENV = "TILELLM_API_KEY"


def _positive(lo: int) -> Any:
    def conv(s: str) -> int:
        try:
            v = int(s, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return conv


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like llm-run, not the whole usage block
        print(f"error: {message} (see llm-server --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llm-server", description="OpenAI-compatible HTTP server for a GGUF model.")
    p.add_argument("-m", "--model", help="GGUF file (default: the embedded Gemma 3 270M, demo extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_positive(0), default=8080, help="port (default 8080; 0 = any free port)")
    p.add_argument("-c", "--ctx-size", type=_positive(0), default=None, metavar="N",
                   help="context per sequence (0 = the model's; default min(model's, 4096))")
    p.add_argument("-np", "--parallel", type=_positive(1), default=1, metavar="N",
                   help="slots: sequences served at once (default 1)")
    p.add_argument("-t", "--threads", type=_positive(1), default=None, metavar="N",
                   help="threads (default: physical cores)")
    p.add_argument("-b", "--batch-size", type=_positive(1), default=512, metavar="N",
                   help="prompt tokens per forward pass (default 512)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' (also ${API_KEY_ENV})")
    p.add_argument("-a", "--alias", default=None, help="model name reported by the API (default: the file name)")
    p.add_argument("--queue-size", type=_positive(0), default=64, metavar="N",
                   help="requests that may wait for a slot before 503 (default 64)")
    p.add_argument("--max-body", type=_positive(1), default=8 << 20, metavar="BYTES",
                   help="largest request body (default 8 MiB; larger gets 413)")
    p.add_argument("--runner", choices=["auto", "batched", "serial", "per-slot"], default="auto",
                   help="batched: a KV cache per slot, all active requests in one forward pass per step; serial: "
                        "one KV cache, requests one after another; per-slot: a model instance per slot, one "
                        "forward each; auto (default): batched when the architecture has it, else serial")
    p.add_argument("--backend", default="auto", help="matmul backend (default auto)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def build_server(args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    """Load the model and return ``(engine, app, models)``; the engine is started.

    ``models`` are the loaded instances (one, or one per slot with ``--runner per-slot``); close them
    after the engine.
    """
    import tilellm

    from ._compat import default_model_path
    from .app import ServerSettings, create_app
    from .engine import Engine
    from .runner import BatchedRunner, ModelPerSlotRunner, SerialRunner, default_runner

    path = args.model or default_model_path()
    n_models = args.parallel if args.runner == "per-slot" else 1
    models: list[Any] = []
    try:
        for _ in range(n_models):
            models.append(tilellm.load(path, n_ctx=args.ctx_size, n_threads=args.threads, n_batch=args.batch_size,
                                       backend=args.backend))
    except BaseException:
        for m in models:
            m.close()
        raise
    runner: Any
    if args.runner == "per-slot":
        runner = ModelPerSlotRunner(models)
    elif args.runner == "serial":
        runner = SerialRunner(models[0])
    elif args.runner == "batched":
        runner = BatchedRunner(models[0], args.parallel)
    else:
        runner = default_runner(models[0], args.parallel)
    engine = Engine(models[0], n_slots=args.parallel, max_queue=args.queue_size, runner=runner).start()
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    settings = ServerSettings(model_id=args.alias or os.path.basename(path), api_key=api_key, max_body=args.max_body)
    return engine, create_app(engine, settings), models


def _has_api_key(args: argparse.Namespace) -> bool:
    return bool(args.api_key or os.environ.get(API_KEY_ENV))


def _runner_name(runner: Any) -> str:
    """The --runner spelling of a runner object."""
    names = {"BatchedRunner": "batched", "SerialRunner": "serial", "ModelPerSlotRunner": "per-slot"}
    return names.get(type(runner).__name__, type(runner).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llm-server``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("error: the server needs its extra: pip install 'tilellm[server]'", file=sys.stderr)
        return 1
    try:
        engine, app, models = build_server(args)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1") and not _has_api_key(args):
        print(f"llm-server: warning: listening on {args.host} without an API key (--api-key or ${API_KEY_ENV})",
              file=sys.stderr)
    model = models[0]
    kind = _runner_name(engine.runner)
    print(f"llm-server: {model.desc}, n_ctx {engine.n_ctx}, {engine.n_slots} slot(s), {kind} runner, "
          f"backend {model.backend}, {model.n_threads} thread(s); listening on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    finally:
        engine.close()
        for m in models:
            m.close()
    return 0


def run_main() -> None:
    sys.exit(main())
