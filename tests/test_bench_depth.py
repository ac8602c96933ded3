"""llm-bench -d (llama-bench's --n-depth): tests run after DEPTH tokens already in the context, the fill untimed and
evaluated once per depth (restored from a saved state afterwards); and scripts/bench_depth.py's own parts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_main, script_module
from test_bench import _SpyModel

from tilellm.llm.cli import bench


class _Spy(_SpyModel):
    """Records what the bench does, in order: resets, evaluations (their lengths), state saves and restores, and
    the clock reads that bracket the timed part."""

    def save_state(self) -> str:
        self.log.append("save")
        return "state"

    def load_state(self, state: str) -> None:
        assert state == "state"
        self.log.append("load")


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


# ----------------------------------------------------------------------------- scripts/bench_depth.py
def _script():
    return script_module("bench_depth")


def test_bench_depth_script_runs_ours(tiny_synth: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """--no-peer on a tiny model (the script's own bookkeeping: depth states, table, JSON, reproducing command);
    the llama.cpp columns need llama-cpp-python, which the test environment does not have."""
    bd = _script()
    monkeypatch.setattr(bd.bp, "synth_path", lambda d, t: tiny_synth)
    monkeypatch.setattr(bd.bp, "SETTLE_S", 0.0)
    out_json = tmp_path / "d.json"
    argv = ["--no-peer", "--backends", "reference", "--depths", "0,24", "--pp", "8", "--tg", "4", "--reps", "1",
            "--tg-reps", "1", "--tg-slice", "2", "--json", str(out_json)]
    assert bd.main(argv) == 0
    text = capsys.readouterr().out
    assert "| 24 | reference |" in text and "reproduce: python scripts/bench_depth.py --no-peer" in text
    doc = json.loads(out_json.read_text())
    assert [(r["depth"], r["engine"]) for r in doc["rows"]] == [(0, "reference"), (24, "reference")]
    assert all(r["pp"] > 0 and r["tg"] > 0 for r in doc["rows"])


def test_bench_depth_table_ratios() -> None:
    bd = _script()
    rows = [{"depth": d, "engine": e, "pp": pp, "pp_median": pp, "tg": tg, "tg_median": tg}
            for d, e, pp, tg in ((0, bd.PEER_FA, 100.0, 10.0), (0, "avx2", 150.0, 12.0),
                                 (1024, bd.PEER_FA, 80.0, 8.0), (1024, "avx2", 120.0, 10.0))]
    t = bd.table(rows, 512, 128)
    assert "| 1024 | avx2 | 120 (120) | 1.50x | 0.80 | 10.0 (10.0) | 1.25x |" in t
    assert "| 1024 | llama.cpp FA | 80 (80) | – | 0.80 | 8.0 (8.0) | – |" in t
    with pytest.raises(SystemExit):
        bd.main(["--depths", "0,-1"])
