"""llm-bench -d (llama-bench's --n-depth): tests run after DEPTH tokens already in the context, the fill untimed and
evaluated once per depth (restored from a saved state afterwards)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import run_main

from tilellm.llm.cli import bench


class _Spy:
    """Records what the bench does, in order: resets, evaluations (their lengths), state saves and restores, and
    the clock reads that bracket the timed part."""

    n_vocab, backend, n_threads, desc, model_size, n_params = 100, "spy", 1, "spy 1M F32", 1, 1

    class tokenizer:  # noqa: N801
        bos_id = 1

    def __init__(self, log: list) -> None:
        self.log = log

    def reset(self) -> None:
        self.log.append("reset")

    def eval(self, ids) -> None:
        self.log.append(len(ids))

    def save_state(self) -> str:
        self.log.append("save")
        return "state"

    def load_state(self, state: str) -> None:
        assert state == "state"
        self.log.append("load")

    def __enter__(self):
        return self

    def __exit__(self, *a) -> None:
        pass


def test_depth_is_filled_once_untimed_then_restored(monkeypatch) -> None:
    log: list = []
    loads: list = []

    def fake_load(path, **kw):
        loads.append(kw)
        return _Spy(log)

    clock = iter(range(1, 10**6))

    def tick() -> int:
        log.append("t")
        return next(clock) * 1000

    monkeypatch.setattr("tilellm.llm.api.load", fake_load)
    monkeypatch.setattr(bench.time, "perf_counter_ns", tick)
    res = bench.run_model_bench("x.gguf", n_prompt=[5], n_gen=[2], reps=2, threads=[1], backends=["reference"],
                                n_depth=[7])
    assert loads[0]["n_ctx"] == 5 + 7
    # warm-up: fill (eval 7, save), pp 5; then per rep a restore and the timed pp; then tg likewise
    assert log == ["reset", 7, "save", "t", 5, "t",
                   "reset", "load", "t", 5, "t", "reset", "load", "t", 5, "t",
                   "reset", "load", "t", 1, "t",
                   "reset", "load", "t", 1, 1, "t", "reset", "load", "t", 1, 1, "t"]
    assert [r.test for r in res] == ["pp5 @ d7", "tg2 @ d7"]
    assert all(r.n_depth == 7 for r in res)


def test_bench_depth_rows(tiny_synth: Path) -> None:
    code, out, err = run_main(bench.main, ["-m", str(tiny_synth), "-p", "8", "-n", "4", "-d", "0,16", "-r", "2",
                                           "-t", "1", "--backend", "reference", "-o", "json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in rows] == [(8, 0, 0), (0, 4, 0), (8, 0, 16),
                                                                         (0, 4, 16)]
    assert all(r["avg_ts"] > 0 and len(r["samples_ns"]) == 2 for r in rows)
    code, out, err = run_main(bench.main, ["-m", str(tiny_synth), "-p", "8", "-n", "0", "-d", "32", "-r", "1",
                                           "-t", "1", "--backend", "reference"])
    assert code == 0, err
    assert re.search(r"\| pp8 @ d32 \| +[\d.]+ ± [\d.]+ \|$", out, re.M)
