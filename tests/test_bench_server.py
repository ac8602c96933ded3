"""scripts/bench_server.py end to end on a micro model: it starts llm-server, drives it at two concurrency levels,
and reports every request's tokens (and skips a llama-server binary that is not there with a note)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_server  # noqa: E402

MODEL = ROOT / "tests" / "data" / "llama2-micro-q8_0.gguf"


def test_prompts_have_the_asked_length_and_differ():
    ps = bench_server.make_prompts(MODEL, 3, 20)
    assert [len(ids) for ids, _ in ps] == [20, 20, 20]
    assert len({tuple(ids) for ids, _ in ps}) == 3
    assert all(isinstance(text, str) and text for _, text in ps)


def test_summary_percentiles_and_rates():
    res = [{"t0": 0.0, "first": 0.1, "last": 0.1 + 0.01 * 9, "done": 0.2, "tokens": 10},
           {"t0": 0.0, "first": 0.3, "last": 0.3 + 0.03 * 9, "done": 1.0, "tokens": 10}]
    s = bench_server.summarize(res, 2)
    assert s["tokens"] == 20 and s["wall_s"] == pytest.approx(1.0) and s["agg_tps"] == pytest.approx(20.0)
    assert s["tpot_p50_ms"] == pytest.approx(10.0) and s["tpot_p99_ms"] == pytest.approx(30.0)
    assert s["ttft_p50_ms"] == pytest.approx(100.0) and s["decode_tps"] == pytest.approx(200.0)


def test_runs_llm_server_at_two_concurrencies(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = bench_server.main(["--models", str(MODEL), "--servers", "tilellm,llama-server", "--concurrency", "1,2",
                            "--prompt-tokens", "12", "--gen-tokens", "6", "--rounds", "2", "--dir", str(tmp_path),
                            "--llama-server", str(tmp_path / "no-such-binary"), "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["server"], r["concurrency"]) for r in rows] == [("tilellm", 1), ("tilellm", 2)]
    for r in rows:
        assert "error" not in r
        assert r["requests"] == 2 * r["concurrency"]
        assert 1 <= r["tokens_per_request"] <= 6 and r["agg_tps"] > 0
    cap = capsys.readouterr()
    assert "llama-server skipped" in cap.err
    assert f"{MODEL} c=2: tilellm" in cap.out and "| 2 | tilellm |" in cap.out
