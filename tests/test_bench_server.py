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
                            "--prompt-tokens", "12", "--gen-tokens", "6", "--requests", "2", "--dir", str(tmp_path),
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


def _row(server, conc, rnd, agg, tpot_ms):
    return {"model": "m", "server": server, "concurrency": conc, "round": rnd, "agg_tps": agg,
            "decode_tps": conc / (tpot_ms / 1e3), "tpot_p50_ms": tpot_ms, "tpot_p99_ms": tpot_ms, "ttft_p50_ms": 1.0,
            "tokens_per_request": 8, "load_before": 1.0, "steal_pct": 0.0}


def test_rounds_report_medians_bests_and_the_ratio_of_medians():
    rows = [_row("tilellm", 1, 1, 100.0, 10.0), _row("tilellm", 8, 1, 500.0, 16.0),
            _row("tilellm", 1, 2, 180.0, 5.0), _row("tilellm", 8, 2, 520.0, 15.0),
            _row("tilellm", 1, 3, 120.0, 8.0), _row("tilellm", 8, 3, 460.0, 17.0),
            _row("llama-server", 8, 1, 200.0, 40.0), _row("llama-server", 8, 2, 260.0, 30.0),
            {"model": "m", "server": "llama-server", "concurrency": 8, "round": 3, "error": "boom"}]
    comb = {(c["server"], c["concurrency"]): c for c in bench_server.combine(rows)}
    one, eight, peer = comb["tilellm", 1], comb["tilellm", 8], comb["llama-server", 8]
    assert one["rounds"] == 3 and one["agg_median"] == 120.0 and one["agg_best"] == 180.0
    assert eight["agg_median"] == 500.0 and eight["agg_best"] == 520.0
    assert one["decode_median"] == pytest.approx(125.0) and eight["decode_median"] == pytest.approx(500.0)
    assert peer["rounds"] == 2 and peer["agg_median"] == 230.0  # the failed round is left out
    text = bench_server.table(rows)
    assert "m c=8: tilellm 500.0 t/s (medians) = 4.17x its c=1 (decode 4.00x)" in text
    assert "tilellm/llama-server 2.17x" in text
    assert "| m | 8 | tilellm | 3 | 500.0 (520.0) | 500.0 (533.3) |" in text
    assert [r["round"] for r in bench_server.median_rows(rows) if r["concurrency"] == 1] == [3]
