"""Shared test helpers: where the fixture models live, and which backends this machine runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
LLAMA2_TYPES = ["f32", "bf16", "q8_0", "q4_0", "q4_1"]


def fixture_path(name: str) -> Path:
    p = DATA / name
    if not p.exists():
        pytest.skip(f"fixture {name} is not in tests/data")
    return p


def kernel_backends() -> list[str]:
    """Every compiled kernel variant this CPU can run."""
    from tilellm import backend

    return [b for b in backend.available() if b != "reference"]


@pytest.fixture(scope="session")
def llama2_refs():
    return {t: np.load(DATA / f"llama2-micro-{t}.npz") for t in LLAMA2_TYPES}
