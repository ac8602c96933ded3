"""llm-bench's -o md|json|jsonl|csv|sql, -pg, -d, --progress; llm-perplexity's --chunks, --kl-divergence(-base)
and one-line usage errors."""
from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import run_main, synthetic_module

from tilellm.llm.cli import bench, perplexity

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def _bench(argv: list[str]) -> tuple[int, str, str]:
    return run_main(bench.main, argv)


BASE = ["-p", "8", "-n", "4", "-r", "2", "-t", "1", "--backend", "reference", "--no-warmup"]


def test_bench_output_formats_hold_the_same_rows(tiny_synth: Path) -> None:
    code, out, _ = _bench(["-m", str(tiny_synth), *BASE, "-o", "jsonl"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in rows] == [(8, 0, 0), (0, 4, 0)]
    code, out, _ = _bench(["-m", str(tiny_synth), *BASE, "-o", "csv"])
    recs = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["n_prompt"] for r in recs] == ["8", "0"] and float(recs[0]["avg_ts"]) > 0
    assert recs[0]["backend"] == "reference" and len(recs[0]["samples_ns"].split()) == 2
    code, out, _ = _bench(["-m", str(tiny_synth), *BASE, "-o", "sql"])
    assert code == 0 and out.startswith("CREATE TABLE IF NOT EXISTS test (")
    db = sqlite3.connect(":memory:")
    db.executescript(out)  # the output is valid SQL
    assert db.execute("SELECT n_prompt, n_gen FROM test ORDER BY n_prompt").fetchall() == [(0, 4), (8, 0)]
    code, out, _ = _bench(["-m", str(tiny_synth), *BASE, "-o", "json"])
    assert code == 0 and len(json.loads(out)) == 2
    code, _, err = _bench(["-m", str(tiny_synth), "-o", "xml"])
    assert code == 2 and err.count("\n") == 1


def test_bench_pg_depth_and_progress(tiny_synth: Path) -> None:
    code, out, err = _bench(["-m", str(tiny_synth), "-p", "0", "-n", "0", "-pg", "8,4", "-d", "0,16", "-r", "1",
                             "-t", "1", "--backend", "reference", "--progress"])
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("| ") and "pp" in ln]
    assert len(lines) == 2
    assert "| pp8+tg4 |" in lines[0] and "| pp8+tg4 @ d16 |" in lines[1]
    assert len(re.findall(r"^llm-bench: test \d/2 \(pp8\+tg4, depth (0|16),", err, re.M)) == 2
    code, _, err = _bench(["-m", str(tiny_synth), "-pg", "8"])
    assert code == 2 and "-pg takes PP,TG" in err and err.count("\n") == 1
    code, _, err = _bench(["--gemm", "--quick", "-o", "csv"])
    assert code == 2 and "--gemm writes -o md or json" in err


def _ppl(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = perplexity.main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ppl") / "t.txt"
    words = "the quick brown fox jumps over the lazy dog while a cat sleeps in the warm sun".split()
    p.write_text(" ".join(words[i % len(words)] + ("." if i % 11 == 10 else "") for i in range(600)))
    return p


def test_chunks_limits_the_chunks(tiny_synth: Path, text_file: Path) -> None:
    code, out, err = _ppl(["-m", str(tiny_synth), "-f", str(text_file), "-c", "32", "--chunks", "2", "-t", "1"])
    assert code == 0, err
    assert re.fullmatch(r"\[1\][\d.]+,\[2\][\d.]+,\nFinal estimate: PPL = [\d.]+ \+/- [\d.]+\n", out), out
    assert "over 2 chunks" in err


def test_kl_divergence_against_itself_is_zero(tiny_synth: Path, text_file: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.kld"
    common = ["-m", str(tiny_synth), "-f", str(text_file), "-c", "32", "--chunks", "3", "-t", "1"]
    code, out, err = _ppl([*common, "--kl-divergence-base", str(base)])
    assert code == 0, err
    assert "Final estimate: PPL" in out and base.stat().st_size > 0
    ppl = float(re.search(r"PPL = ([\d.]+)", out).group(1))
    code, out, err = _ppl([*common, "--kl-divergence-base", str(base), "--kl-divergence"])
    assert code == 0, err
    assert len(re.findall(r"^ +[123] ", out, re.M)) == 3  # a row per chunk
    mean = re.search(r"^Mean    KLD: +([-\d.e]+) ± +([-\d.e]+)$", out, re.M)
    assert mean and float(mean.group(1)) == 0.0 and float(mean.group(2)) == 0.0
    assert float(re.search(r"^Maximum KLD: +([-\d.e]+)$", out, re.M).group(1)) == 0.0
    assert re.search(r"^Same top p: 100.000 ± 0.000 %$", out, re.M)
    assert re.search(r"^RMS Δp    :   0.000 %$", out, re.M)
    pq = float(re.search(r"^Mean PPL\(Q\) +: +([\d.]+)$", out, re.M).group(1))
    pb = float(re.search(r"^Mean PPL\(base\) +: +([\d.]+)$", out, re.M).group(1))
    assert pq == pb and abs(pq - ppl) < 1e-3 * ppl
    # another model (a different seed of the synthetic one) diverges: KL > 0
    other = synthetic_module().write_synthetic_gguf(tmp_path / "other.gguf", hidden=64, ffn=64, heads=2, kv_heads=1,
                                                    vocab=300, layers=1, ctx=256, wtype="q8_0", seed=7)
    code, out, err = _ppl(["-m", str(other), *common[2:], "--kl-divergence-base", str(base), "--kl-divergence"])
    assert code == 0, err
    assert float(re.search(r"^Mean    KLD: +([-\d.e]+)", out, re.M).group(1)) > 0.0


@pytest.mark.parametrize("argv,needle", [
    (["--kl-divergence"], "--kl-divergence needs --kl-divergence-base"),
    (["--chunks", "0"], "must be >= 1"),
    (["-c", "7"], "even number"),
    (["--nope"], "unrecognized arguments"),
    ([], "the following arguments are required: -f"),
])
def test_perplexity_usage_errors_are_one_line(argv, needle, text_file: Path) -> None:
    full = argv if needle.startswith("the following") else ["-f", str(text_file), *argv]
    code, out, err = _ppl(full)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def test_kl_divergence_base_mismatch_is_one_line(tiny_synth: Path, text_file: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.kld"
    junk.write_bytes(b"not a base")
    code, _, err = _ppl(["-m", str(tiny_synth), "-f", str(text_file), "-c", "32", "--kl-divergence-base", str(junk),
                         "--kl-divergence"])
    assert code == 1 and err.count("\n") == 1 and "not a KL-divergence base file" in err
