"""The lint step of .ci/run: the import contract (import-linter), ruff, and mypy on the public packages.

    pip install -e ".[lint]" && python scripts/lint.py

tilellm's packages live in four top-level folders that pyproject.toml maps to one namespace
([tool.setuptools.package-dir]). import-linter and mypy find packages on the file system, so the
namespace is first staged as build/lint/tilellm/... (copies of the .py files); their messages are
mapped back to the source paths. Exit status: non-zero if any of the three fails.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "lint"


def package_dirs() -> dict[str, Path]:
    """Package name -> source folder, from pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        cfg = tomllib.load(f)
    return {pkg: ROOT / d for pkg, d in cfg["tool"]["setuptools"]["package-dir"].items()}


def stage() -> dict[str, str]:
    """Copy every package's .py files under STAGE in their import layout; staged prefix -> source prefix."""
    shutil.rmtree(STAGE, ignore_errors=True)
    back: dict[str, str] = {}
    for pkg, src in package_dirs().items():
        dst = STAGE.joinpath(*pkg.split("."))
        for py in src.rglob("*.py"):
            rel = py.relative_to(src)
            if any(part.startswith((".", "build")) for part in rel.parts) or (
                    pkg == "tilellm" and rel.parts[0] != rel.name):  # the root folder holds only its own files
                continue
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(py, out)
        back[str(dst.relative_to(ROOT)) + os.sep] = str(src.relative_to(ROOT)) + os.sep
    return back


def run(cmd: list[str], back: dict[str, str], env: dict[str, str] | None = None) -> int:
    print("==", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    out = p.stdout + p.stderr
    for staged, src in sorted(back.items(), key=lambda kv: -len(kv[0])):  # longest (deepest) prefix first
        out = out.replace(staged, src)
    print(out.rstrip())
    return p.returncode


def main() -> int:
    back = stage()
    env = {**os.environ, "PYTHONPATH": str(STAGE)}  # the staged namespace, not the editable install
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    rc = run([lint_imports], back, env)
    rc |= run([sys.executable, "-m", "ruff", "check", "."], {})
    rc |= run([sys.executable, "-m", "mypy"], back, {**os.environ, "MYPYPATH": str(STAGE)})
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
