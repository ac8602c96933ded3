"""What the command-line tools share: the usage error, a parser that raises it, and the one-line error contract
(every failure is one ``error:`` line on stderr and an exit status, never a traceback)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SIGINT, EXIT_PIPE = 0, 1, 2, 130, 141


class UsageError(Exception):
    """A command-line mistake (one line, exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse prints a usage block and exits; the contract is one line, so its errors raise UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line(e: BaseException) -> str:
    """The message of `e` on one line (an OSError as 'strerror: filename')."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.strerror}: {e.filename}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())


def error_line(e: BaseException) -> str:
    """`error: ...` for an exception: our errors, OSError and ValueError as themselves, anything else marked as
    an internal error with its type (a bug to report, not the user's mistake)."""
    from tilellm.quant.errors import TileLLMError

    known = isinstance(e, (TileLLMError, OSError, ValueError))
    return f"error: {'' if known else f'internal error ({type(e).__name__}): '}{one_line(e)}"


def guarded_main(run: Callable[[Sequence[str] | None, TextIO, TextIO], int], argv: Sequence[str] | None,
                 out: TextIO, err: TextIO, *, interrupted: str | None = None,
                 on_interrupt: Callable[[], None] | None = None) -> int:
    """Run a tool's `run(argv, out, err)` under the one-line error contract; on Ctrl-C `interrupted` is printed
    and `on_interrupt` called. ``TILELLM_DEBUG=1`` lets unexpected exceptions through with their traceback."""
    try:
        return run(argv, out, err)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if interrupted:
            print(interrupted, file=err)
        if on_interrupt is not None:
            on_interrupt()
        return EXIT_SIGINT
    except BrokenPipeError:
        return EXIT_PIPE
    except Exception as e:  # noqa: BLE001 - the CLI contract: one line, never a traceback
        if os.environ.get("TILELLM_DEBUG"):
            raise
        print(error_line(e), file=err)
        return EXIT_ERROR
