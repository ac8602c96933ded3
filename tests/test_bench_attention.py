"""scripts/bench_attention.py: the kernel timed at a tiny shape, its flop count, and its output line."""
from __future__ import annotations

import sys

import numpy as np
from conftest import kernel_backends, script_module


def test_flops_count_the_visible_pairs() -> None:
    ba = script_module("bench_attention")
    # T=2 after 3 keys: query 0 sees 4 keys, query 1 sees 5 -> 9 pairs per head, 4*D flops each
    assert ba.flops(2, 3, H=2, D=8) == 4 * 8 * 2 * 9


def test_operands_are_cache_arrays_of_the_type() -> None:
    ba = script_module("bench_attention")
    q, k, v = ba.operands(3, 5, 4, 2, 32, "q8_0")
    assert q.shape == (3, 4, 32) and k.shape == (8, 2, 1) and v.shape == k.shape and k.dtype.itemsize == 34


def test_a_tiny_run_prints_one_line_per_depth(monkeypatch, capsys) -> None:
    ba = script_module("bench_attention")
    monkeypatch.setattr(sys, "argv", ["bench_attention.py", "--T", "5", "--depths", "0,40", "--heads", "4,2,32",
                                      "--reps", "1", "--threads", "1", "--variant", kernel_backends()[0]])
    ba.main()
    out = capsys.readouterr().out.splitlines()
    rows = [ln for ln in out if ln.startswith("depth")]
    assert len(rows) == 2 and "GFLOP/s" in rows[1]
    assert np.isfinite(float(rows[1].split("max|diff| vs first")[1]))
