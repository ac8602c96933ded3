"""scripts/bench_gemma3.py's peer choice (issue 19: Gemma 3 against llama.cpp's AVX2-only build)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_gemma3.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_peer_isa_is_an_option() -> None:
    r = run("--help")
    assert r.returncode == 0, r.stderr
    assert "--peer-isa {native,avx2}" in r.stdout


@pytest.mark.parametrize("isa", ["native", "avx2"])
def test_missing_peer_build_is_a_one_line_usage_error(isa: str) -> None:
    """No .peers/ISA build: exit 2 with the build command to run, before any model is loaded."""
    if (ROOT / ".peers" / isa / "llama_cpp" / "lib").is_dir():
        pytest.skip(f"a {isa} peer is built here")
    r = run("--peer-isa", isa)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].endswith(f"no peer build at {ROOT / '.peers' / isa}: run scripts/build_peer.sh {isa}"), err
    assert "Traceback" not in r.stderr


def test_unknown_peer_isa_is_refused() -> None:
    r = run("--peer-isa", "avx512")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr
