"""llm-bench: llama-bench-style model runs and the GEMM mode."""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import need_data, run_main

from tilellm.llm.cli import bench

DATA = Path(__file__).parent / "data"
MODEL = DATA / "llama2-micro-q8_0.gguf"


def run(argv: list[str]) -> tuple[int, str, str]:
    return run_main(bench.main, argv)


ROW = re.compile(r"^\| llama 3\.6M Q8_0 \| 3\.\d\d MiB \| 3\.57 M \| (\w+) \| (\d+) \| (pp\d+|tg\d+) \| "
                 r"(\d+\.\d\d) ± (\d+\.\d\d) \|$")


# ----------------------------------------------------------------------------- model mode

def test_markdown_rows_like_llama_bench() -> None:
    code, out, err = run(["-m", str(need_data(MODEL)), "-p", "16", "-n", "4", "-r", "1", "-t", "1",
                          "--backend", "reference", "--no-warmup"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "| model | size | params | backend | threads | test | t/s |"
    rows = [ROW.match(l) for l in lines[2:]]
    assert all(rows), lines
    assert [(r.group(1), r.group(2), r.group(3)) for r in rows] == [("reference", "1", "pp16"),
                                                                     ("reference", "1", "tg4")]
    assert all(float(r.group(4)) > 0 for r in rows)


def test_json_fields_and_statistics(tiny_synth: Path) -> None:
    code, out, err = run(["-m", str(tiny_synth), "-p", "4,8", "-n", "3", "-r", "3", "-t", "1,2",
                          "--backend", "reference", "-b", "8", "-o", "json"])
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 2 * 3  # threads × (pp8, pp16, tg3)
    for r in rows:
        for key in ("model_type", "model_size", "model_n_params", "n_batch", "n_threads", "n_prompt", "n_gen",
                    "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts", "backend"):
            assert key in r
        assert r["backend"] == "reference" and r["n_batch"] == 8
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 3
        n_tok = r["n_prompt"] or r["n_gen"]
        np.testing.assert_allclose(r["samples_ts"], [n_tok * 1e9 / ns for ns in r["samples_ns"]])
        assert r["avg_ts"] == pytest.approx(statistics.fmean(r["samples_ts"]))
        assert r["stddev_ts"] == pytest.approx(statistics.stdev(r["samples_ts"]))  # sample std
        assert r["avg_ns"] == pytest.approx(statistics.fmean(r["samples_ns"]))
    assert sorted({r["n_threads"] for r in rows}) == [1, 2]
    assert sorted((r["n_prompt"], r["n_gen"]) for r in rows if r["n_threads"] == 1) == [(0, 3), (4, 0), (8, 0)]


class _SpyModel:
    """Records what the bench evaluates."""

    n_vocab, backend, n_threads, desc, model_size, n_params = 100, "spy", 1, "spy 1M F32", 1, 1

    class tokenizer:  # noqa: N801
        bos_id = 1

    def __init__(self, log: list) -> None:
        self.log = log

    def reset(self) -> None:
        self.log.append("reset")

    def eval(self, ids) -> None:
        self.log.append(len(ids))

    def __enter__(self):
        return self

    def __exit__(self, *a) -> None:
        pass


def test_pp_is_one_eval_after_reset_tg_is_single_tokens(monkeypatch) -> None:
    log: list = []
    loads: list = []

    def fake_load(path, **kw):
        loads.append(kw)
        return _SpyModel(log)

    monkeypatch.setattr("tilellm.llm.api.load", fake_load)
    res = bench.run_model_bench("x.gguf", n_prompt=[5], n_gen=[3], reps=2, threads=[1], backends=["reference"],
                                n_batch=[4])
    assert loads == [dict(n_ctx=5, n_threads=1, n_batch=4, backend="reference", tokenizer=None)]
    # warm-up pp, 2 timed pp; warm-up tg of one token, 2 timed tg of 3 single tokens
    assert log == ["reset", 5, "reset", 5, "reset", 5,
                   "reset", 1, "reset", 1, 1, 1, "reset", 1, 1, 1]
    assert [r.test for r in res] == ["pp5", "tg3"]
    log.clear()
    bench.run_model_bench("x.gguf", n_prompt=[5], n_gen=[0], reps=1, threads=[1], backends=["reference"],
                          warmup=False)
    assert log == ["reset", 5]


# ----------------------------------------------------------------------------- gemm mode

def test_gemm_json_rows_and_arithmetic() -> None:
    code, out, err = run(["--gemm", "--types", "f32,q4_0,q8_0", "--shapes", "64x64,32x96", "--n", "1,4", "-r", "2",
                          "--backend", "reference", "-o", "json", "--min-time", "0.001"])
    assert code == 0, err
    doc = json.loads(out)
    peak = doc["peak"][0]
    assert peak["gflops"] > 0 and ("estimate" in peak["source"] or "tl_fma_peak" in peak["source"])
    rows = doc["results"]
    # per (shape, n): one numpy row and one per type
    assert len(rows) == 2 * 2 * (1 + 3)
    assert {(r["backend"], r["type"]) for r in rows} == {("numpy", "f32"), ("reference", "f32"),
                                                         ("reference", "q4_0"), ("reference", "q8_0")}
    for r in rows:
        flops = 2 * r["m"] * r["n"] * r["k"]
        assert r["gflops"] == pytest.approx(flops / r["median_ns"])
        assert r["median_ns"] == pytest.approx(statistics.median(r["samples_ns"]))
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / r["peak_gflops"])
        assert r["vs_numpy"] == pytest.approx(r["gflops"] / r["numpy_gflops"])
        assert r["rel_err"] < 3e-2  # the reference backend computes the right product
        assert len(r["samples_ns"]) == 2


def test_gemm_markdown_and_peak_line() -> None:
    code, out, err = run(["--gemm", "--quick", "--backend", "all", "-r", "1", "--min-time", "0"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("| backend | threads | type | m | k | n | GFLOP/s | % peak |")
    body = [l for l in lines[2:] if l.startswith("|")]
    from tilellm import backend

    n_be = len(backend.available())
    per = 1 + n_be * len(bench.QUICK["types"])
    assert len(body) == len(bench.QUICK["shapes"]) * len(bench.QUICK["n"]) * per
    assert re.search(r"^FP32 FMA peak, \d+ threads: [\d.]+ GFLOP/s \(", out, re.M)


def test_gemm_skips_types_whose_block_does_not_fit() -> None:
    code, out, err = run(["--gemm", "--types", "f32,q4_0", "--shapes", "16x48", "--n", "1", "-r", "1",
                          "--backend", "reference", "-o", "json"])
    assert code == 0
    assert {r["type"] for r in json.loads(out)["results"]} == {"f32"}
    assert "q4_0".upper() in err and "skipping" in err


def test_fma_peak(monkeypatch) -> None:
    gf, how = bench.fma_peak(1)
    assert gf > 0 and isinstance(how, str) and how
    from tilellm import backend

    if any(b != "reference" for b in backend.available()):
        assert how.startswith("measured: tl_fma_peak")
    # without kernels: a numpy-based estimate, labelled as such
    monkeypatch.setattr(bench, "_kernel_fma_peak", lambda n: None)
    gf2, how2 = bench.fma_peak(1)
    assert gf2 > 0 and how2.startswith("estimate: numpy")


def test_default_shapes_and_quick() -> None:
    assert (24576, 1536) in bench.DEFAULT_SHAPES and (2048, 2048) in bench.DEFAULT_SHAPES
    assert len(bench.DEFAULT_SHAPES) == 8 and bench.DEFAULT_N == (1, 16, 128, 512)


# ----------------------------------------------------------------------------- errors

def test_no_model_and_no_demo_extra(monkeypatch) -> None:
    """No -m: the demo model is used; without the demo extra (simulated) one line says how to get it."""
    import sys

    from tilellm.llm.cli.default_model import PACKAGE

    monkeypatch.setitem(sys.modules, PACKAGE, None)
    rc, out, err = run([])
    assert rc != 0 and len(err.splitlines()) == 1 and err.startswith("error: ") and "tilellm[demo]" in err


@pytest.mark.parametrize("argv, frag, code", [
    (["-m", "{model}", "-p", "x"], "invalid integer", 2),
    (["-m", "{model}", "-t", "0"], ">= 1", 2),
    (["-m", "{model}", "-r", "1,2"], "-r", 2),
    (["-m", "{model}", "--quick"], "--gemm", 2),
    (["-m", "{model}", "-o", "xml"], "invalid choice", 2),  # csv is a format now
    (["-m", "/nonexistent/m.gguf", "-p", "1", "-n", "0", "-r", "1"], "m.gguf", 1),
    (["-m", "{model}", "-p", "1", "-n", "0", "-r", "1", "--backend", "warp9"], "warp9", 1),
    (["--gemm", "--types", "q9_9"], "q9_9", 1),
    (["--gemm", "--shapes", "12by4"], "MxK", 2),
    (["--gemm", "-m", "{model}"], "model", 2),
])
def test_errors_one_line(argv, frag, code) -> None:
    argv = [a.format(model=need_data(MODEL)) for a in argv]
    rc, out, err = run(argv)
    assert rc == code, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and frag in err


def test_subprocess_entry_point(tiny_synth: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "tilellm.llm.cli.bench", "-m", str(tiny_synth), "-p", "8", "-n", "2",
                        "-r", "1", "--backend", "reference", "-o", "json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [x["n_prompt"] for x in json.loads(r.stdout)] == [8, 0]
