"""Renders untrusted chat templates in a child process with a time and memory budget.

A chat template comes from the model file, so it is untrusted code in a small language. jinja2's
sandbox stops it from reaching Python objects, but not from spending unbounded CPU or memory
(``range`` loops nested in each other, ``'x'.center(10**9)``, a block ``set`` that captures a
loop's output, big-integer arithmetic). Bounding every string-producing operation inside one
process is a game of whack-a-mole; a child process with an address-space limit and a wall-clock
deadline bounds all of them at once:

* the parent (``TemplateWorker.render``) sends ``(template, variables)`` as JSON and waits at most
  ``timeout`` seconds; past that the child is killed (and restarted on the next call);
* the child (``python template_worker.py``, importing only the standard library and jinja2) runs
  under ``RLIMIT_AS`` = its size after start-up + ``MEMORY_BUDGET`` (Linux), so a bomb ends in a
  ``MemoryError`` in the child, not in the parent;
* the rendered text is capped at ``max_chars`` before it is sent back.

One child serves the whole process (a lock serialises the calls); starting it (~0.1 s, once) is not
counted in the deadline. This file is also the child's program, so it must not import tilellm.
"""
from __future__ import annotations

import atexit
import json
import operator
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

MEMORY_BUDGET = 96 << 20   # bytes the child may allocate beyond its start-up size
MAX_SEQ = 1 << 20          # longest string/list one `*` may build (a first, in-sandbox line of defence)
MAX_POW_EXP = 1024         # largest exponent `**` accepts
_HEADER = struct.Struct("<Q")


class TemplateRefused(Exception):
    """The child refused or failed the render; ``kind`` is "security", "template" or "limit"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------- child side

def _raise_exception(message: str) -> None:
    raise _TemplateRaised(str(message))


class _TemplateRaised(Exception):
    """raise_exception() called by the template (e.g. "roles must alternate")."""


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False,
            ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2.exceptions import SecurityError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            # jinja2 would hand back an undefined value that renders as ""; refuse loudly instead
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} "
                                "object is not allowed in a chat template")

        def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
            if operator_name == "*":
                for seq, count in ((left, right), (right, left)):
                    if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
                        if len(seq) * max(count, 0) > MAX_SEQ:
                            raise SecurityError("a chat template may not build a sequence this long")
                return operator.mul(left, right)
            if operator_name == "**":
                if isinstance(right, (int, float)) and abs(right) > MAX_POW_EXP:
                    raise SecurityError("exponent too large in a chat template")
                return operator.pow(left, right)
            return super().call_binop(context, operator_name, left, right)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], autoescape=False)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


@lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    return _environment().from_string(template)


def render_here(template: str, variables: dict[str, Any], max_chars: int) -> str:
    """Compile and render in this process (the child's job); raises TemplateRefused."""
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        compiled = _compile(template)
    except SecurityError as e:
        raise TemplateRefused("security", str(e)) from e
    except TemplateError as e:
        raise TemplateRefused("template", f"invalid chat template: {e}") from e
    except RecursionError as e:
        raise TemplateRefused("template", "invalid chat template: nested too deeply to compile") from e
    out: list[str] = []
    n = 0
    try:
        for piece in compiled.generate(**variables):
            n += len(piece)
            if n > max_chars:
                raise TemplateRefused("limit", f"the chat template's output exceeds {max_chars} characters")
            out.append(piece)
    except (TemplateRefused, MemoryError):
        raise
    except _TemplateRaised as e:
        raise TemplateRefused("template", str(e)) from e
    except SecurityError as e:
        raise TemplateRefused("security", f"chat template blocked by the sandbox: {e}") from e
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError,
            RecursionError) as e:
        raise TemplateRefused("template", f"chat template failed: {type(e).__name__}: {e}") from e
    text = "".join(out)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # e.g. a "\ud800" literal in the template
        raise TemplateRefused("template", f"the chat template produced invalid text (a lone surrogate at {e.start})") \
            from None
    return text


def _read_msg(f: Any) -> Any:
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    return json.loads(f.read(n).decode("utf-8"))


def _write_msg(f: Any, obj: Any) -> None:
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    f.write(_HEADER.pack(len(data)) + data)
    f.flush()


def _limit_memory() -> None:
    try:
        import resource

        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = size + MEMORY_BUDGET
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):  # no /proc or no RLIMIT_AS (macOS, Windows): the deadline still holds
        pass


def child_main() -> None:
    """The child's loop: one request in, one answer out, until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the parent, which ends us by EOF
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    import jinja2.sandbox  # noqa: F401 - import before measuring the start-up size

    _environment()
    _limit_memory()
    out.write(b"R")
    out.flush()
    while True:
        req = _read_msg(inp)
        if req is None:
            return
        try:
            text = render_here(req["template"], req["variables"], int(req["max_chars"]))
            _write_msg(out, {"ok": text})
        except TemplateRefused as e:
            _write_msg(out, {"kind": e.kind, "error": str(e)})
        except MemoryError:
            _write_msg(out, {"kind": "limit", "error": "the chat template needed more than "
                                                       f"{MEMORY_BUDGET >> 20} MB of memory"})
            return  # the heap may stay near the limit: the parent starts a fresh child for the next render


# ----------------------------------------------------------------------------- parent side

class TemplateWorker:
    """The parent's handle on the child process: ``render`` with a deadline; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)  # end the child with the process (no "subprocess still running" warning)

    def _start(self) -> subprocess.Popen[bytes]:
        # -I: no PYTHON* variables, user site or script directory on the path (it imports only jinja2)
        proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if self._read_exact(proc, 1, time.monotonic() + 60) != b"R":
            proc.kill()
            proc.wait()
            raise TemplateRefused("limit", "the chat template renderer could not be started")
        return proc

    @staticmethod
    def _read_exact(proc: subprocess.Popen[bytes], n: int, deadline: float) -> bytes | None:
        """n bytes from the child's stdout by `deadline`, or None (timed out or the child is gone)."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    return None
                buf += chunk
        return buf

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                if f is not None:
                    f.close()
            self._proc = None

    def render(self, template: str, variables: dict[str, Any], *, timeout: float, max_chars: int) -> str:
        """Render in the child; raises TemplateRefused (kind "limit" for the time and memory budgets)."""
        data = json.dumps({"template": template, "variables": variables, "max_chars": max_chars},
                          ensure_ascii=False).encode("utf-8")
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None
            deadline = time.monotonic() + timeout
            try:
                proc.stdin.write(_HEADER.pack(len(data)) + data)
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill()
                raise TemplateRefused("limit", "the chat template renderer stopped") from None
            head = self._read_exact(proc, _HEADER.size, deadline)
            body = self._read_exact(proc, _HEADER.unpack(head)[0], deadline + 5) if head else None
            if body is None:
                timed_out = proc.poll() is None
                self._kill()
                if timed_out:
                    raise TemplateRefused("limit", f"the chat template took longer than {timeout:g} s to render")
                raise TemplateRefused("limit", "the chat template exhausted the renderer's memory budget")
            reply = json.loads(body.decode("utf-8"))
            if reply.get("kind") == "limit":  # a child that hit a budget is not reused (its heap may be near the limit)
                self._kill()
        if "ok" in reply:
            return str(reply["ok"])
        raise TemplateRefused(reply.get("kind", "template"), reply.get("error", "chat template failed"))

    def close(self) -> None:
        with self._lock:
            self._kill()


if __name__ == "__main__":
    child_main()
