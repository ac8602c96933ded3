"""The layer program's steps on every kernel backend, against a float64 numpy reading of the same program: ragged
sizes (head size 10, partial rope of 6, 3 query heads over 1 kv head, k = 37 for the down products, 6 experts in 3
groups), products of mixed weight types sharing one input, per-head products, a sliding window, attention with key
and value heads of different sizes, a sigmoid-gated MoE with a selection bias; several tokens in one call (own slots
and positions) equal each alone bit for bit."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import kernel_backends

from tilellm import backend as backends
from tilellm.backend import LayerProgram, MoESpec
from tilellm.errors import ShapeError
from tilellm.llm.models.moe import RouterConfig, route
from tilellm.quant import GGMLType, TensorView, dequantize, quantize

E, H, HKV, D, ROT, F, FX, N_EXP = 64, 3, 1, 10, 6, 37, 24, 6
N_CTX, N_SLOTS = 16, 3
ROUTER = RouterConfig(n_expert=N_EXP, n_used=2, gating=2, n_group=3, n_group_used=2, norm=True, scale=1.5)


def _w(name: str, shape: tuple[int, ...], t: GGMLType, rng: np.random.Generator) -> TensorView:
    k, rows = shape[0], int(np.prod(shape[1:]))
    raw = quantize((rng.standard_normal((rows, k)) / math.sqrt(k)).astype(np.float32), t)
    return TensorView.from_bytes(name, shape, t, raw.reshape(-1))


def _dq(t: TensorView) -> np.ndarray:
    return dequantize(t.data, t.type, t.k).astype(np.float64)  # [rows, k]


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(5)
    w = {
        "q": _w("q", (E, H * D), GGMLType.F32, rng), "k": _w("k", (E, HKV * D), GGMLType.F16, rng),
        "v": _w("v", (E, HKV * D), GGMLType.F32, rng), "o": _w("o", (H * D, E), GGMLType.F16, rng),
        "heads": _w("heads", (D, 7, H), GGMLType.F32, rng), "gate": _w("gate", (E, F), GGMLType.F32, rng),
        "up": _w("up", (E, F), GGMLType.F16, rng), "down": _w("down", (F, E), GGMLType.F32, rng),
        "router": _w("router", (E, N_EXP), GGMLType.F32, rng), "gx": _w("gx", (E, FX, N_EXP), GGMLType.F32, rng),
        "ux": _w("ux", (E, FX, N_EXP), GGMLType.F32, rng), "dx": _w("dx", (FX, E, N_EXP), GGMLType.F16, rng),
    }
    vec = {n: (1 + 0.1 * rng.standard_normal(k)).astype(np.float32) for n, k in (("n1", E), ("qn", D), ("n2", E))}
    vec["bias"] = (0.05 * rng.standard_normal(N_EXP)).astype(np.float32)
    vec["bq"] = (0.1 * rng.standard_normal(H * D)).astype(np.float32)
    kc = rng.standard_normal((N_SLOTS, N_CTX, HKV, D)).astype(np.float32)
    vc = rng.standard_normal((N_SLOTS, N_CTX, HKV, D)).astype(np.float32)
    v7 = rng.standard_normal((N_SLOTS, N_CTX, HKV, 7)).astype(np.float32)
    return w, vec, kc, vc, v7


def _program(w, vec, kc, vc, v7) -> LayerProgram:
    P = LayerProgram(E, ROT)
    qkv, att, att2, hd, o, gu, d, y = (P.buffer(n) for n in (H * D + 2 * HKV * D, H * D, H * 7, H * 7, E, 2 * F, E, E))
    ck, cv, c7 = P.cache(kc), P.cache(vc), P.cache(v7)
    P.matmul([w["q"], w["k"], w["v"]], P.H, qkv, E, pre="rms", norm=vec["n1"], eps=1e-5)  # f32, f16, f32 weights
    P.add(qkv, H * D, vec=vec["bq"])
    P.rms_norm(qkv, qkv, vec["qn"], 1e-6, D, rows=H + HKV, ld=D)
    P.rope(qkv, H, D, neox=True)
    P.rope(qkv + H * D, HKV, D, neox=False)
    P.store(ck, qkv + H * D, HKV * D)
    P.store(cv, qkv + (H + HKV) * D, HKV * D)
    P.store(c7, qkv + (H + HKV) * D, 7)  # values of another head size
    P.attention(qkv, att, ck, cv, H, HKV, D, D, 0.3, window=3)
    P.attention(qkv, att2, ck, c7, H, HKV, D, 7, 0.25)
    P.matmul_heads(w["heads"], H, att, D, D, hd, 7)
    P.add(hd, 7, src=att2, rows=H, ld_dst=7, ld_src=7)
    P.copy(att, hd, 7, rows=H, ld_dst=D, ld_src=7)  # att heads: 7 values of hd, then their own last 3
    P.matmul([w["o"]], att, o, H * D)
    P.add(P.H, E, src=o)
    P.matmul([w["gate"], w["up"]], P.H, gu, E, pre="rms", norm=vec["n2"], eps=1e-5)
    P.matmul([w["down"]], gu, d, F, pre="geglu", src2=gu + F)
    P.add(P.H, E, src=d)
    P.matmul([w["gate"], w["up"]], P.H, gu, E)
    P.matmul([w["down"]], gu, d, F, pre="swiglu", src2=gu + F)
    P.add(P.H, E, src=d)
    P.moe(P.H, y, E, MoESpec(w["router"], vec["bias"], ROUTER.n_used, ROUTER.gating, ROUTER.n_group,
                             ROUTER.n_group_used, ROUTER.norm, ROUTER.scale, w["gx"], w["ux"], w["dx"]))
    P.add(P.H, E, src=y)
    return P


def _numpy(w, vec, kc, vc, v7, h, pos, slots) -> np.ndarray:
    """The program above in float64 numpy, token by token (writes the caches as the program does)."""
    W = {n: _dq(t) for n, t in w.items()}
    rms = lambda x, g, eps: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g  # noqa: E731
    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))  # noqa: E731
    out = []
    for j in range(h.shape[0]):
        x, p, s = h[j].astype(np.float64), int(pos[j]), int(slots[j])
        xn = rms(x, vec["n1"], 1e-5)
        q = W["q"] @ xn + vec["bq"]
        k, v = W["k"] @ xn, W["v"] @ xn
        qk = rms(np.concatenate([q, k]).reshape(H + HKV, D), vec["qn"], 1e-6)
        ang = p / 10000.0 ** (np.arange(0, ROT, 2) / ROT)  # the test's own angles, passed to the program too
        c, sn = np.cos(ang).astype(np.float32).astype(np.float64), np.sin(ang).astype(np.float32).astype(np.float64)
        for r in range(H + HKV):
            if r < H:  # neox halves
                a, b = qk[r, :ROT // 2].copy(), qk[r, ROT // 2:ROT].copy()
                qk[r, :ROT // 2], qk[r, ROT // 2:ROT] = a * c - b * sn, a * sn + b * c
            else:  # adjacent pairs
                a, b = qk[r, 0:ROT:2].copy(), qk[r, 1:ROT:2].copy()
                qk[r, 0:ROT:2], qk[r, 1:ROT:2] = a * c - b * sn, a * sn + b * c
        kc[s, p, 0], vc[s, p, 0], v7[s, p, 0] = qk[H], v, v[:7]
        att, att2 = np.zeros((H, D)), np.zeros((H, 7))
        for hh in range(H):
            for o_, vals, win, sc in ((att, vc, 3, 0.3), (att2, v7, 0, 0.25)):
                lo = max(0, p - win + 1) if win else 0
                keys = kc[s, lo:p + 1, 0].astype(np.float64)
                e = np.exp(keys @ qk[hh] * sc - (keys @ qk[hh] * sc).max())
                o_[hh] = (e / e.sum()) @ vals[s, lo:p + 1, 0].astype(np.float64)
        hd = np.stack([W["heads"][hh * 7:(hh + 1) * 7] @ att[hh] for hh in range(H)]) + att2
        att[:, :7] = hd
        x = x + W["o"] @ att.reshape(-1)
        xn = rms(x, vec["n2"], 1e-5)
        x = x + W["down"] @ (gelu(W["gate"] @ xn) * (W["up"] @ xn))
        x = x + W["down"] @ (silu(W["gate"] @ x) * (W["up"] @ x))
        ids, wts = route((W["router"] @ x)[None].astype(np.float32), ROUTER, vec["bias"])
        y = np.zeros(E)
        for e_, wt in sorted(zip(ids[0], wts[0])):
            g_, u_, d_ = (W[n][e_ * m:(e_ + 1) * m] for n, m in (("gx", FX), ("ux", FX), ("dx", E)))
            y += wt * (d_ @ (silu(g_ @ x) * (u_ @ x)))
        out.append(x + y)
    return np.stack(out)


@pytest.mark.parametrize("be_name", kernel_backends())
def test_layer_program_steps_and_token_independence(be_name, layer):
    w, vec, kc0, vc0, v70 = layer
    be = backends.get(be_name, n_threads=2)
    rng = np.random.default_rng(9)
    h = rng.standard_normal((3, E)).astype(np.float32)
    pos, slots = np.array([4, 0, 9]), np.array([2, 0, 1])
    ang = pos[:, None] / 10000.0 ** (np.arange(0, ROT, 2) / ROT)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    caches = [kc0.copy(), vc0.copy(), v70.copy()]
    plan = be.plan_layer(_program(w, vec, *caches))
    assert plan is not None
    got = h.copy()
    be.decode_layer(plan, got, cos, sin, pos, slots)
    ref_caches = [kc0.copy(), vc0.copy(), v70.copy()]
    want = _numpy(w, vec, *ref_caches, h, pos, slots)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want).max())
    for c, rc in zip(caches, ref_caches):
        np.testing.assert_allclose(c, rc, rtol=0, atol=1e-5 * np.abs(rc).max())
    # each token alone, on fresh caches: the same bits as in the call of three
    for j in range(3):
        alone_caches = [kc0.copy(), vc0.copy(), v70.copy()]
        p1 = be.plan_layer(_program(w, vec, *alone_caches))
        one = h[j:j + 1].copy()
        be.decode_layer(p1, one, cos[j:j + 1].copy(), sin[j:j + 1].copy(), pos[j:j + 1], slots[j:j + 1])
        assert np.array_equal(one[0], got[j]), f"token {j} alone differs from the call of three"


def test_plan_refuses_what_does_not_fit(layer):
    bes = kernel_backends()
    if not bes:
        pytest.skip("no kernel backend here")
    be = backends.get(bes[0], n_threads=1)
    w, vec, kc, vc, v7 = layer
    P = LayerProgram(E, ROT)
    P.matmul_heads(w["heads"], H + 1, P.H, D, D, P.buffer(40), 7)  # 4 heads of a 3-matrix weight
    with pytest.raises(ShapeError, match="matrices"):
        be.plan_layer(P)
    P = LayerProgram(E, ROT)
    P.rms_norm(P.H, P.H, vec["qn"], 1e-6, E)  # a norm vector of another length
    with pytest.raises(ShapeError, match="values"):
        be.plan_layer(P)
    P = LayerProgram(E, ROT)
    P.store(P.cache(kc[:, :, :, ::2]), P.H, 5)  # a cache whose positions are not contiguous
    with pytest.raises(ShapeError):
        be.plan_layer(P)
