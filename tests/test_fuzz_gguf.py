"""Fuzz open_gguf with mutated fixture GGUFs: only documented errors (or a clean load) are allowed.

The default run does a few hundred cases in-process under a SIGALRM guard plus a deterministic sweep
of extreme values over every length/count/offset field; `-m slow` runs >= 10,000 cases in subprocess
batches (env TILELLM_FUZZ_CASES sets the count, TILELLM_FUZZ_SEED the seed), which also catches
hard crashes and C-level hangs. The mutation engine lives in scripts/fuzz_gguf.py.
"""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from conftest import script_module

ROOT = Path(__file__).resolve().parent.parent
fz = script_module("fuzz_gguf")

SEED = int(os.environ.get("TILELLM_FUZZ_SEED", "20240601"))
TEMPLATE_PATHS = fz.find_templates()
pytestmark = pytest.mark.skipif(not TEMPLATE_PATHS, reason="no template GGUFs in tests/data")


@pytest.fixture(scope="module")
def templates() -> list:
    return fz.load_templates(TEMPLATE_PATHS)


def _assert_clean(results: list[tuple[int, str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    bad = []
    for i, outcome, detail in results:
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome not in ("rejected", "loaded"):
            bad.append(f"case {SEED}:{i} {outcome}: {detail}")
    assert not bad, ("\n".join(bad[:10])
                     + "\n(rebuild one with: python scripts/fuzz_gguf.py --case SEED:INDEX --out x.gguf)")
    return counts


def test_make_case_is_deterministic(templates: list) -> None:
    a = fz.make_case(templates, SEED, 17)
    b = fz.make_case(templates, SEED, 17)
    c = fz.make_case(templates, SEED, 18)
    assert a == b and a[1] != c[1]


def test_fuzz_in_process(templates: list, tmp_path: Path) -> None:
    """A thousand mutated files: every one loads or raises a TileLLMError, none hangs."""
    n = 1000
    t0 = time.process_time()  # CPU time: a loaded machine must not fail a no-hang check
    results = [(i, *fz.run_case_guarded(templates, SEED, i, str(tmp_path), timeout_s=10.0)) for i in range(n)]
    counts = _assert_clean(results)
    # The mutations must have teeth, and must not reject everything (loaded cases exercise the views).
    assert counts.get("rejected", 0) > n // 2, counts
    assert counts.get("loaded", 0) > 0, counts
    assert time.process_time() - t0 < 45


def test_fuzz_deep_in_process(templates: list, tmp_path: Path) -> None:
    """Past open_gguf: files that load go on through tilellm.load, tokenize and one eval."""
    results = [(i, *fz.run_case_guarded(templates, SEED, i, str(tmp_path), timeout_s=20.0, deep=True))
               for i in range(20_000, 20_300)]
    counts = _assert_clean(results)
    deep_rejects = sum(1 for _, o, d in results if o == "rejected" and ": deep: " in d)
    assert counts.get("loaded", 0) > 0, "no mutated file made it through load + eval: is the model path broken?"
    assert deep_rejects > 0, counts


def test_fuzz_differential_against_gguf_py(templates: list, tmp_path: Path) -> None:
    """Loaded cases must read exactly as gguf-py reads them (no silent wrong answer)."""
    results, loaded = [], 0
    i = 10_000
    while loaded < 25 and i < 10_600:
        outcome, detail = fz.run_case_guarded(templates, SEED, i, str(tmp_path), timeout_s=20.0, diff=True)
        results.append((i, outcome, detail))
        loaded += outcome == "loaded"
        i += 1
    _assert_clean(results)
    assert loaded >= 10


def test_differential_oracle_catches_a_wrong_value(tmp_path: Path) -> None:
    """Self-check: diff_with_gguf_py reports a metadata value or tensor byte that differs."""
    from tilellm.llm.gguf.reader import open_gguf

    path = str(TEMPLATE_PATHS[0])
    with open_gguf(path) as f:
        assert fz.diff_with_gguf_py(path, f) == []
        key = "general.architecture"
        f.metadata[key] = "not-" + f.metadata[key]
        assert any(key in p for p in fz.diff_with_gguf_py(path, f))


U64_LABELS = ("header.n_tensors", "header.n_kv", "kv.key.len", "val.str.len", "arr.count", "ti.name.len", "ti.ne",
              "ti.offset")


def test_extreme_values_in_every_size_field(templates: list, tmp_path: Path) -> None:
    """Deterministic sweep: each u64 length/count/dim/offset field of one fixture set to 0, 1, 2^32, 2^63, 2^64-1."""
    from tilellm.errors import TileLLMError
    from tilellm.llm.gguf.reader import open_gguf

    t = min(templates, key=lambda t: len(t.data))
    fields = [f for f in t.fields if f[2] in U64_LABELS]
    assert len(fields) > 50
    path = tmp_path / "sweep.gguf"
    outcomes: dict[str, int] = {"loaded": 0, "rejected": 0}
    for pos, _, label in fields:
        for v in (0, 1, 2**32, 2**63, 2**64 - 1):
            buf = bytearray(t.data)
            struct.pack_into("<Q", buf, pos, v)
            if path.exists():
                path.unlink()
            path.write_bytes(buf)
            try:
                with open_gguf(path) as f:
                    assert fz._check_loaded(f) == [], (label, pos, v)
                outcomes["loaded"] += 1
                # no length, count, dimension or offset this large fits a 2 MB file
                assert v < 2**32, f"{label}@{pos} = {v} loaded"
            except TileLLMError as e:
                outcomes["rejected"] += 1
                if v >= 2**32:  # a huge size fails on a bound check that says so
                    says = ("cannot fit", "remain", "exceeds", "outside", "truncated", "past the end", "dimensions",
                            "multiple of the alignment")
                    assert any(w in str(e) for w in says), (label, v, str(e))
    assert outcomes["rejected"] >= 3 * len(fields), outcomes


@pytest.mark.slow
def test_fuzz_long_run_subprocess_batches() -> None:
    """>= 10,000 cases (TILELLM_FUZZ_CASES) in worker subprocesses, through load + eval: no crash, hang,
    undocumented error."""
    n = int(os.environ.get("TILELLM_FUZZ_CASES", "10000"))
    s = fz.run_batches(n, seed=SEED, batch=500, timeout_s=60.0, jobs=max(1, (os.cpu_count() or 2) // 2), deep=True)
    print(s.line())
    assert s.n == n
    assert s.counts["crash"] == s.counts["hang"] == s.counts["undocumented"] == s.counts["wrong"] == 0, \
        "\n".join(s.failures[:10])
    assert s.counts["rejected"] > 0 and s.counts["loaded"] > 0


# ---------------------------------------------------------------- schema-aware cases (issue #14)
@pytest.fixture(scope="module")
def schema_runner():
    return fz.SchemaRunner(TEMPLATE_PATHS)


def test_schema_cases_are_deterministic(schema_runner) -> None:
    a = fz.make_schema_case(schema_runner.metas, SEED, 17)
    b = fz.make_schema_case(schema_runner.metas, SEED, 17)
    assert repr(a) == repr(b)
    assert repr(a) != repr(fz.make_schema_case(schema_runner.metas, SEED, 18))


def test_schema_fuzz_in_process(schema_runner) -> None:
    """A few hundred retyped / extreme metadata values and chat-template payloads: only documented errors."""
    n = int(os.environ.get("TILELLM_SCHEMA_FUZZ_SMALL", "300"))
    results = [(i, *fz.run_schema_guarded(schema_runner, SEED, i, 20.0)) for i in range(n)]
    counts = _assert_clean(results)
    assert counts.get("rejected", 0) > n // 4 and counts.get("loaded", 0) > n // 20, counts


def test_schema_fuzz_covers_every_known_key(schema_runner) -> None:
    """Over 3,000 generated cases, every key of every architecture's schema (and the chat template) is mutated."""
    seen: set[str] = set()
    for i in range(3000):
        seen.update(fz.make_schema_case(schema_runner.metas, SEED, i)[0].replace(";", " ").split())
    archs = {m["general.architecture"] for m in schema_runner.metas} | {"gemma3"}
    want = {f"{a}.{k}" for a in archs for k in fz.SCHEMA[a]} | set(fz.TOKENIZER_KEYS) | set(fz.GENERAL_KEYS)
    assert not want - seen, sorted(want - seen)[:10]
    assert any(w.startswith("chat_template=") for w in seen)


@pytest.mark.slow
def test_schema_fuzz_long_run_subprocess_batches() -> None:
    """>= 10,000 schema cases (TILELLM_SCHEMA_FUZZ_CASES) in worker subprocesses, each under an address-space cap
    and an RSS limit: no crash, hang, undocumented error or memory overrun."""
    n = int(os.environ.get("TILELLM_SCHEMA_FUZZ_CASES", "10000"))
    s = fz.run_batches(n, seed=SEED, batch=1000, timeout_s=30.0, jobs=max(1, (os.cpu_count() or 2) // 2),
                       schema=True, mem_mb=2048)
    print(s.line())
    assert s.n == n
    bad = ("crash", "hang", "undocumented", "wrong", "memory")
    assert all(s.counts[k] == 0 for k in bad), "\n".join(s.failures[:10])
    assert s.counts["rejected"] > 0 and s.counts["loaded"] > 0
