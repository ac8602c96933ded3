"""MoE routing (softmax / sigmoid, selection bias, groups, normalisation, scale) and expert dispatch."""
from __future__ import annotations

import numpy as np
import pytest

from tilellm import backend as backends
from tilellm.backend.ops import silu
from tilellm.llm.models.moe import GATING_SIGMOID, GATING_SOFTMAX, RouterConfig, moe_ffn, route
from tilellm.quant import GGMLType, TensorView, quantize


def test_softmax_topk_without_norm():
    logits = np.array([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 2.9]], np.float32)
    ids, w = route(logits, RouterConfig(n_expert=4, n_used=2, gating=GATING_SOFTMAX, scale=1.5))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert ids.tolist() == [[1, 2], [0, 3]]
    np.testing.assert_allclose(w, 1.5 * np.take_along_axis(p, ids, -1), rtol=1e-6)  # not renormalised


def test_sigmoid_bias_selects_but_does_not_weigh():
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
    bias = np.array([0.0, 0.0, 0.0, 1.0], np.float32)  # lifts expert 3 from last to first for selection
    cfg = RouterConfig(n_expert=4, n_used=2, gating=GATING_SIGMOID, norm=True, scale=2.5)
    ids, w = route(logits, cfg, bias)
    s = 1 / (1 + np.exp(-logits[0]))
    assert ids.tolist() == [[3, 0]]  # biased: 0.269+1 > 0.881 > 0.731
    want = s[[3, 0]] / s[[3, 0]].sum() * 2.5  # weights from the unbiased scores, renormalised, scaled
    np.testing.assert_allclose(w[0], want, rtol=1e-6)


def test_group_score_is_sum_of_two_best():
    # 3 groups of 3. Group 0 has the single best expert (0.95) but a weak second: by max it would win, by
    # top-2 sum (0.95 + 0.05 = 1.0) it loses to groups 1 (0.6 + 0.6) and 2 (0.55 + 0.5).
    s = np.array([[0.95, 0.05, 0.0, 0.6, 0.6, 0.1, 0.55, 0.5, 0.2]], np.float32)
    logits = np.log(s / (1 - s + 1e-12) + 1e-30).astype(np.float32)  # sigmoid(logits) == s
    cfg = RouterConfig(n_expert=9, n_used=3, gating=GATING_SIGMOID, n_group=3, n_group_used=2)
    ids, _ = route(logits, cfg)
    assert sorted(ids[0].tolist()) == [3, 4, 6]  # best 3 inside groups 1 and 2; expert 0 is excluded
    ids_all, _ = route(logits, RouterConfig(n_expert=9, n_used=3, gating=GATING_SIGMOID))
    assert 0 in ids_all[0]  # without groups the best expert is taken


def test_bad_router_config():
    with pytest.raises(ValueError):
        RouterConfig(n_expert=8, n_used=9)
    with pytest.raises(ValueError):
        RouterConfig(n_expert=8, n_used=2, n_group=3, n_group_used=1)
    with pytest.raises(ValueError):
        RouterConfig(n_expert=8, n_used=2, gating=3)


class _CountingBackend:
    """Wraps a backend and records which weights its matmul saw and for how many tokens."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.weight_types, self.n_threads = inner.name, inner.weight_types, inner.n_threads

    def supports(self, t):
        return self.inner.supports(t)

    def prepare(self, x, t):
        return self.inner.prepare(x, t)

    def matmul(self, w, x, out=None):
        n = x.shape[0] if isinstance(x, np.ndarray) else x.n
        self.calls.append((w.name, n))
        return self.inner.matmul(w, x, out)


def _experts(rng, d: int, f: int, E: int, t: GGMLType):
    def stack(name, k, m):
        x = rng.standard_normal((E * m, k)).astype(np.float32) / np.sqrt(k)
        tv = TensorView(name, (k, m, E), t, quantize(x, t).reshape(E * m, -1))
        return tv, tv.dequantize().reshape(E, m, k)

    return stack("gate", d, f), stack("up", d, f), stack("down", f, d)


def test_moe_dispatch_matches_dense_loop():
    rng = np.random.default_rng(7)
    T, d, f, E = 9, 64, 32, 8
    (g, gd), (u, ud), (dn, dd) = _experts(rng, d, f, E, GGMLType.Q8_0)
    x = rng.standard_normal((T, d)).astype(np.float32)
    # experts 2 and 5 are shared by many tokens; 0, 4 and 7 are never chosen
    ids = np.array([[2, 5], [5, 2], [2, 1], [3, 5], [2, 6], [1, 2], [5, 3], [6, 2], [2, 5]], np.int64)
    w = rng.uniform(0.1, 1.0, ids.shape).astype(np.float32)
    be = _CountingBackend(backends.get("reference"))
    got = moe_ffn(be, x, ids, w, g, u, dn)
    want = np.zeros((T, d), np.float32)
    for t in range(T):  # the plain per-token definition
        for j, e in enumerate(ids[t]):
            want[t] += w[t, j] * (dd[e] @ (silu(gd[e] @ x[t]) * (ud[e] @ x[t])))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # each used expert ran once (gate, up, down) on all of its tokens; unused experts never ran
    used = {e: int((ids == e).sum()) for e in np.unique(ids)}
    assert sorted(be.calls) == sorted((f"{n}[{e}]", c) for e, c in used.items() for n in ("gate", "up", "down"))
    assert not any(c[0].endswith(("[0]", "[4]", "[7]")) for c in be.calls)


def test_route_then_dispatch_end_to_end():
    """Routing from logits plus dispatch equals routing + the dense loop (sigmoid, groups, bias, norm)."""
    rng = np.random.default_rng(11)
    T, d, f, E = 16, 32, 32, 8
    (g, gd), (u, ud), (dn, dd) = _experts(rng, d, f, E, GGMLType.F32)
    x = rng.standard_normal((T, d)).astype(np.float32)
    cfg = RouterConfig(n_expert=E, n_used=2, gating=GATING_SIGMOID, n_group=4, n_group_used=2, norm=True, scale=2.5)
    logits, bias = rng.standard_normal((T, E)).astype(np.float32), rng.normal(0, 0.05, E).astype(np.float32)
    ids, w = route(logits, cfg, bias)
    assert ids.shape == (T, 2) and np.all(ids[:, 0] != ids[:, 1])
    np.testing.assert_allclose(w.sum(-1), 2.5, rtol=1e-6)
    sel = (1 / (1 + np.exp(-logits)) + bias).reshape(T, 4, 2)  # groups of 2: the group score is their sum
    best_groups = np.argsort(-sel.sum(-1), axis=-1)[:, :2]
    assert all(set(ids[t] // 2) <= set(best_groups[t]) for t in range(T))
    got = moe_ffn(backends.get("reference"), x, ids, w, g, u, dn)
    want = np.stack([sum(w[t, j] * (dd[e] @ (silu(gd[e] @ x[t]) * (ud[e] @ x[t]))) for j, e in enumerate(ids[t]))
                     for t in range(T)])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
