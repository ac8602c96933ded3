"""Context shift (llama.cpp's --context-shift / --keep): `DecoderModel.shift_context`, `generate(context_shift=True)`,
`Llama(context_shift=True)` and llm-run's flags.

(a) Exactness by construction: greedy decoding past n_ctx with the model's shift equals a reference that shifts
the cache with its own float64 numpy code (the discarded rows dropped, every moved key un-rotated from its old
position and rotated to its new one with angles computed afresh from the file's rope settings) — for llama,
llama 3 (rope_freqs), qwen3, phi3 (LongRoPE factors), gemma3 (sliding window, two rope bases), deepseek2 (MLA
latent cache; the expanded attn_kv_b layout with YaRN). On the reference backend, and on the kernel backends
(one-call decode layers) against the reference shift of the same backend.
(b) Coherence on Gemma 3 270M: in test_context_shift_gemma3.py. (c) Errors: clear one-line messages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from _synth_gemma3 import write_gemma3
from conftest import fixture_path, kernel_backends, run_main

import tilellm
from tilellm import backend as backends
from tilellm.errors import UnsupportedError
from tilellm.llm.gguf.reader import open_gguf
from tilellm.llm.models.architectures import model_class
from tilellm.llm.models.kvshift import RopedKeys, shift_arrays
from tilellm.llm.models.layers import Rope
from tilellm.llm.models.yarn import YarnParams, yarn_inv_freq

N_CTX = 32
PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889]


# ----------------------------------------------------------------------------------- the reference shift
def _inv_freq(base: float, n_rot: int) -> np.ndarray:
    return base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)


def rope_layout(dec: Any) -> dict[str, Callable[[int], tuple[int, int, str, np.ndarray] | None]]:
    """Per cache array, layer -> (first rope'd value of the row's last axis, n_rot, pair layout, frequencies), from
    the file's metadata and this test's own reading of each architecture (not the model's `_roped_keys`)."""
    md, arch = dec.file.metadata, dec.file.arch
    a = arch + "."
    base = float(md.get(a + "rope.freq_base", 10000.0))
    if arch == "deepseek2":
        n_rot = int(md[a + "rope.dimension_count"])
        inv = _inv_freq(base, n_rot)
        y = YarnParams.from_metadata(md, arch)
        if y is not None:
            inv = yarn_inv_freq(n_rot, base, y)
        if a + "attention.key_length_mla" in md:  # the latent, then k_pe
            lora = int(md[a + "attention.kv_lora_rank"])
            return {"kv": lambda li: (lora, n_rot, "norm", inv)}
        start = int(md[a + "attention.key_length"]) - n_rot  # per head: k_nope, then k_pe
        return {"k": lambda li: (start, n_rot, "norm", inv)}
    head_dim = int(md.get(a + "attention.key_length", md[a + "embedding_length"] // md[a + "attention.head_count"]))
    n_rot = int(md.get(a + "rope.dimension_count", head_dim))
    mode = "norm" if arch in ("llama", "granite") else "neox"
    inv = _inv_freq(base, n_rot)
    if "rope_freqs.weight" in dec.file.tensors:  # llama 3: per-pair divisors
        inv = inv / dec.file.tensors["rope_freqs.weight"].dequantize().reshape(-1).astype(np.float64)
    if arch == "phi3":  # LongRoPE: the short factors below the original context
        orig = int(md[a + "rope.scaling.original_context_length"])
        t = dec.file.tensors["rope_factors_long.weight" if dec.n_ctx > orig else "rope_factors_short.weight"]
        inv = inv / t.dequantize().reshape(-1).astype(np.float64)
    if arch == "gemma3":  # every sixth layer global (base rope.freq_base), the others local (rope.local_freq_base)
        local = _inv_freq(float(md[a + "rope.local_freq_base"]), n_rot)
        return {"k": lambda li: (0, n_rot, mode, local if li % 6 < 5 else inv)}
    return {"k": lambda li: (0, n_rot, mode, inv)}


def _turn(x: np.ndarray, start: int, n_rot: int, mode: str, ang: np.ndarray) -> None:
    """x [R, M, row] (float64): pairs of x[..., start:start+n_rot] turned by ang [R, n_rot/2] (row r by ang[r])."""
    seg = x[..., start:start + n_rot]
    ia, ib = (slice(0, n_rot // 2), slice(n_rot // 2, n_rot)) if mode == "neox" else (slice(0, None, 2),
                                                                                      slice(1, None, 2))
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = seg[..., ia].copy(), seg[..., ib].copy()
    seg[..., ia] = a * c - b * s
    seg[..., ib] = a * s + b * c


def reference_shift(dec: Any, n_keep: int, n_discard: int) -> None:
    """Drop cached positions n_keep..n_keep+n_discard-1; each later key un-rotated from its old position p and
    rotated to p - n_discard with fresh angles (float64); everything else moved as it is."""
    layout = rope_layout(dec)
    n = dec.n_past
    old_pos = np.arange(n_keep + n_discard, n, dtype=np.float64)
    for name, arr in dec._cache_arrays().items():
        x = arr[:, :n].astype(np.float64)
        kept = np.concatenate([x[:, :n_keep], x[:, n_keep + n_discard:]], axis=1)
        spec = layout.get(name)
        for li in range(arr.shape[0]):
            r = spec(li) if spec is not None else None
            if r is None or not old_pos.size:
                continue
            start, n_rot, mode, inv = r
            rows = kept[li, n_keep:].reshape(old_pos.size, -1, arr.shape[-1])
            _turn(rows, start, n_rot, mode, -old_pos[:, None] * inv[None, :])
            _turn(rows, start, n_rot, mode, (old_pos - n_discard)[:, None] * inv[None, :])
            kept[li, n_keep:] = rows.reshape(kept[li, n_keep:].shape)
        arr[:, :n - n_discard] = kept
    dec.n_past = n - n_discard


def model_shift(dec: Any, n_keep: int, n_discard: int) -> None:
    dec.shift_context(n_keep, n_discard)


def run(dec: Any, prompt: list[int], n_gen: int, n_keep: int, shift: Callable[[Any, int, int], None],
        forced: list[int] | None = None) -> tuple[list[int], np.ndarray, int]:
    """Greedy (or `forced`) continuation of `prompt`: (tokens, logits after the prompt and after each token,
    shifts made). When the next token would pass n_ctx, `shift(dec, n_keep, half of the rest)` first."""
    dec.reset()
    logits = dec.eval(prompt)
    toks, out, shifts = [], [logits], 0
    for i in range(n_gen):
        t = int(np.argmax(logits)) if forced is None else forced[i]
        toks.append(t)
        if dec.n_past >= dec.n_ctx:
            shift(dec, n_keep, (dec.n_past - n_keep) // 2)
            shifts += 1
        logits = dec.eval([t])
        out.append(logits)
    return toks, np.stack(out), shifts


# ----------------------------------------------------------------------------------- the models
def _fixture(name: str) -> Callable[[Path], Path]:
    return lambda tmp: fixture_path(f"{name}.gguf")


def _deepseek_kvb_yarn(tmp: Path) -> Path:
    from test_model_deepseek2 import _join_kv_b, _rewrite, _to_kv_b_layout

    def edit(md: dict) -> None:
        _to_kv_b_layout(md)
        md["deepseek2.rope.scaling.type"] = "yarn"
        md["deepseek2.rope.scaling.factor"] = 4.0
        md["deepseek2.rope.scaling.original_context_length"] = 16

    p = tmp / "ds2-kvb-yarn.gguf"
    _rewrite("deepseek2-micro-q8_0", p, edit, _join_kv_b)
    return p


def _gemma3(tmp: Path) -> Path:
    return write_gemma3(tmp / "gemma3-tiny.gguf")


MODELS: dict[str, Callable[[Path], Path]] = {
    "llama2": _fixture("llama2-micro-q8_0"), "llama2-f32": _fixture("llama2-micro-f32"),
    "llama3": _fixture("llama3-micro-q4_0"), "qwen3": _fixture("qwen3-micro-q8_0"),
    "phi3": _fixture("phi3-micro-q8_0"), "gemma3": _gemma3, "deepseek2": _fixture("deepseek2-micro-q8_0"),
    "deepseek2-kvb-yarn": _deepseek_kvb_yarn}
_PATHS: dict[str, Path] = {}


def model_path(name: str, tmp_path_factory: Any) -> Path:
    if name not in _PATHS:
        _PATHS[name] = MODELS[name](tmp_path_factory.mktemp(name))
    return _PATHS[name]


def decoder(name: str, be: str, tmp_path_factory: Any, n_ctx: int = N_CTX, kv: str = "f32") -> Any:
    """The model on backend be; its KV cache f32 by default (these float64 references compare at 1e-6: the
    configuration they were written for), or of type `kv`."""
    f = open_gguf(model_path(name, tmp_path_factory))
    return model_class(f.arch)(f, backends.get(be, n_threads=2), n_ctx=n_ctx, type_k=kv, type_v=kv)


def _prompt(dec: Any) -> list[int]:
    return [t % dec.n_vocab for t in PROMPT]


def _agree(got: np.ndarray, want: np.ndarray, rel: float, what: str) -> None:
    """Logits [steps, V] within rel x the largest |logit|; argmax equal wherever want's top-2 gap is clear of that."""
    tol = rel * float(np.abs(want).max())
    err = np.abs(got - want).max(axis=-1)
    assert np.isfinite(got).all()
    assert err.max() <= tol, f"{what}: max |Δlogit| {err.max():.3g} at step {int(err.argmax())} > {tol:.3g}"
    top2 = np.sort(want, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 4 * tol
    assert np.array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear]), what


# ----------------------------------------------------------------------------------- (a) exactness
@pytest.mark.parametrize("name", list(MODELS))
def test_shift_equals_the_reference_shift(name, tmp_path_factory):
    """Reference backend, the model's shift vs the reference shift: several shifts (n_keep 4), the same greedy
    tokens and the logits within 1e-6 of the largest (measured: equal bits on every model here and on every kernel
    backend — one turn by -n_discard and the two turns of the reference round to the same float32 keys)."""
    dec = decoder(name, "reference", tmp_path_factory)
    ids = _prompt(dec)
    toks, got, shifts = run(dec, ids, 60, 4, model_shift)
    assert shifts >= 3
    _, want, _ = run(dec, ids, 60, 4, reference_shift, forced=toks)
    _agree(got, want, 1e-6, name)
    # and the shift is not a no-op: without re-rotating the moved keys the logits leave that bar
    toks_nr, bad, _ = run(dec, ids, 60, 4, _shift_without_rotation, forced=toks)
    assert np.abs(bad - want).max() > 1e-3 * np.abs(want).max()


def _shift_without_rotation(dec: Any, n_keep: int, n_discard: int) -> None:
    """The rows moved, the keys left at their old angles (what a shift must not do)."""
    n = dec.n_past
    for a in dec._cache_arrays().values():
        a[:, n_keep:n - n_discard] = a[:, n_keep + n_discard:n].copy()
    dec.n_past = n - n_discard


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("name", ["llama2", "llama2-f32", "qwen3", "gemma3", "deepseek2", "deepseek2-kvb-yarn"])
def test_shift_on_kernel_backends(name, be, tmp_path_factory):
    """The kernel backends (one-call decode layers where the model has them): the model's shift vs the reference
    shift of the same backend."""
    dec = decoder(name, be, tmp_path_factory)
    ids = _prompt(dec)
    toks, got, shifts = run(dec, ids, 48, 4, model_shift)
    assert shifts >= 2
    _, want, _ = run(dec, ids, 48, 4, reference_shift, forced=toks)
    _agree(got, want, 1e-6, f"{be}/{name}")


def test_keeps_and_moves_every_cache_row(tmp_path_factory):
    """After one shift the values (no rope) are exactly the old rows n_keep.. moved down; the kept rows untouched."""
    dec = decoder("llama2", "reference", tmp_path_factory)
    dec.reset()
    dec.eval(list(range(1, N_CTX + 1)))
    k0, v0 = dec.k_cache.copy(), dec.v_cache.copy()
    dec.shift_context(5, 11)
    assert dec.n_past == N_CTX - 11
    assert np.array_equal(dec.v_cache[:, :5], v0[:, :5]) and np.array_equal(dec.k_cache[:, :5], k0[:, :5])
    assert np.array_equal(dec.v_cache[:, 5:N_CTX - 11], v0[:, 16:N_CTX])
    assert not np.array_equal(dec.k_cache[:, 5:N_CTX - 11], k0[:, 16:N_CTX])
    # a rotation keeps each rope pair's length
    def pair_norms(k: np.ndarray) -> np.ndarray:
        return np.hypot(k[..., 0::2].astype(np.float64), k[..., 1::2])
    np.testing.assert_allclose(pair_norms(dec.k_cache[:, 5:N_CTX - 11]), pair_norms(k0[:, 16:N_CTX]), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_shift_arrays_any_float_dtype(dtype):
    """The storage conversion: float64 arithmetic, rounded once to the cache's type; a rotation by -d positions
    undoes one by +d (to that rounding); non-float storage is refused by name."""
    rng = np.random.default_rng(0)
    rope = Rope(8, 10000.0, "neox")
    a = rng.standard_normal((2, 10, 3, 12)).astype(dtype)
    b = a.copy()
    roped = [RopedKeys("k", (0, 1), 2, rope)]
    shift_arrays({"k": b}, roped, 2, 3, 10)
    want = a.astype(np.float64)[:, 5:10].copy()
    ang = -3 * rope.inv_freq
    x = want[..., 2:10]
    c, s = np.cos(ang), np.sin(ang)
    lo, hi = x[..., :4].copy(), x[..., 4:].copy()
    x[..., :4], x[..., 4:] = lo * c - hi * s, lo * s + hi * c
    np.testing.assert_array_equal(b[:, :2], a[:, :2])
    np.testing.assert_array_equal(b[:, 2:7], want.astype(dtype))
    np.testing.assert_array_equal(b[..., :2][:, 2:7], a[..., :2][:, 5:10])  # outside the rope'd slice: moved only
    with pytest.raises(UnsupportedError, match="stored as int8"):
        shift_arrays({"k": np.zeros((1, 4, 8), np.int8)}, [RopedKeys("k", (0,), 0, rope)], 0, 1, 4)


# ----------------------------------------------------------------------------------- the API
@pytest.fixture(scope="module")
def llama2_model():
    with tilellm.load(fixture_path("llama2-micro-q8_0.gguf"), n_ctx=N_CTX, n_threads=2) as m:
        yield m


def test_generate_shifts_like_the_decoder_loop(llama2_model):
    """generate(context_shift=True, n_keep=3): a prompt starting with BOS keeps BOS + 3 (llama.cpp's --keep), greedy
    tokens past n_ctx equal the decoder-level loop's, the cache ends holding the kept prompt and the latest tokens."""
    m = llama2_model
    ids = _prompt(m.decoder)
    out = m.generate(ids, max_tokens=70, temperature=0, context_shift=True, n_keep=3)
    assert out.finish_reason == "length" and out.completion_tokens == 70
    ctx = m.context_tokens
    seq = ids + out.tokens[:-1]  # the last sampled token is never evaluated
    assert len(ctx) > 4 and ctx[:4] == ids[:4] and ctx[4:] == seq[len(seq) - (len(ctx) - 4):]
    toks, _, shifts = run(m.decoder, ids, 70, 4, model_shift)
    assert out.tokens == toks and shifts >= 3
    # a streamed generation shifts alike
    chunks = list(m.generate(ids, max_tokens=70, temperature=0, context_shift=True, n_keep=3, stream=True))
    assert [t for c in chunks for t in c.tokens] == toks and chunks[-1].finish_reason == "length"


def test_generate_without_shift_stops_at_a_full_context(llama2_model):
    m = llama2_model
    ids = _prompt(m.decoder)
    out = m.generate(ids, max_tokens=70, temperature=0)
    assert out.finish_reason == "length" and out.completion_tokens == N_CTX - len(ids)


def test_keep_all_and_n_discard(llama2_model):
    """n_keep=-1 keeps the whole prompt; n_discard drops that many (llama.cpp server's n_discard)."""
    m = llama2_model
    ids = _prompt(m.decoder)
    out = m.generate(ids, max_tokens=40, temperature=0, context_shift=True, n_keep=-1, n_discard=5)
    assert out.completion_tokens == 40
    assert m.context_tokens[:len(ids)] == ids
    toks, _, _ = run(m.decoder, ids, 40, len(ids), lambda d, k, n: d.shift_context(k, 5))
    assert out.tokens == toks


def test_llama_class_context_shift():
    from tilellm import Llama

    with Llama(model_path=str(fixture_path("llama2-micro-q8_0.gguf")), n_ctx=N_CTX, verbose=False,
               context_shift=True, n_keep=-1) as llm:
        r = llm.create_completion(_prompt(llm.model.decoder), max_tokens=50, temperature=0)
        assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 50
    with Llama(model_path=str(fixture_path("llama2-micro-q8_0.gguf")), n_ctx=N_CTX, verbose=False) as llm:
        r = llm.create_completion(_prompt(llm.model.decoder), max_tokens=50, temperature=0)
        assert r["usage"]["completion_tokens"] == N_CTX - len(PROMPT)


def test_gemma3_generate_with_shift(tmp_path_factory):
    """The tiny Gemma 3 (sliding window 8 < n_ctx) through generate(): the tokens of the model-level loop."""
    with tilellm.load(model_path("gemma3", tmp_path_factory), n_ctx=N_CTX, n_threads=2) as m:
        ids = m.tokenize("the quick brown fox jumps over")
        out = m.generate(ids, max_tokens=60, temperature=0, context_shift=True, n_keep=2)
        toks, _, _ = run(m.decoder, ids, 60, 3, model_shift)
        assert out.tokens == toks


# ----------------------------------------------------------------------------------- (c) errors
def test_errors(llama2_model):
    m = llama2_model
    ids = _prompt(m.decoder)
    with pytest.raises(ValueError, match=r"^n_keep \(32\) must be below n_ctx \(32\)"):
        m.generate(ids, context_shift=True, n_keep=32)
    with pytest.raises(ValueError, match="leaves nothing to discard in a context of 32"):
        m.generate(list(range(1, 32)), context_shift=True, n_keep=-1)
    for kw in ({"n_keep": -2}, {"n_discard": -1}, {"n_keep": 1.5}, {"n_keep": True}):
        with pytest.raises(ValueError, match="must be an integer"):
            m.generate(ids, context_shift=True, **kw)
    m.reset()
    m.eval(ids)
    for k, d in ((-1, 1), (0, 0), (5, 8)):
        with pytest.raises(ValueError, match="context shift needs"):
            m.decoder.shift_context(k, d)
    assert m.n_past == len(ids)  # a refused shift changes nothing


def test_a_decoder_without_shift_is_refused(llama2_model):
    class Plain:
        def __init__(self, inner: Any) -> None:
            self.inner, self.n_ctx, self.n_past, self.n_vocab = inner, inner.n_ctx, 0, inner.n_vocab

        def eval(self, tokens: Any, logits_all: bool = False) -> np.ndarray:
            return self.inner.eval(tokens, logits_all)

        def reset(self) -> None:
            self.inner.reset()

    m = llama2_model
    real = m.decoder
    m.decoder = Plain(real)
    try:
        with pytest.raises(UnsupportedError, match="cannot shift its context"):
            m.generate([1, 2, 3], context_shift=True)
    finally:
        m.decoder = real


def test_llm_run_flags(tmp_path):
    from tilellm.llm.cli.run import main

    path = str(fixture_path("llama2-micro-q8_0.gguf"))
    base = ["-m", path, "-p", "Once upon a time", "-c", "24", "--temp", "0", "-t", "1", "--no-perf"]
    code, out, err = run_main(main, base + ["-n", "40", "--context-shift", "--keep", "-1"])
    assert code == 0, err
    with tilellm.load(path, n_ctx=24, n_threads=1) as m:
        want = m.generate("Once upon a time", max_tokens=40, temperature=0, context_shift=True, n_keep=-1)
    assert out == "Once upon a time" + want.text + "\n"
    code, out2, err = run_main(main, base + ["-n", "40"])
    assert code == 0 and len(out2) < len(out)  # no shift: ends at the full context
    code, _, err = run_main(main, base + ["--context-shift", "--keep", "30"])
    assert code == 1 and err.startswith("error: n_keep (30) must be below n_ctx (24)") and err.count("\n") == 1
    code, _, err = run_main(main, base + ["--keep", "-2"])
    assert code == 2 and err.count("\n") == 1


@pytest.mark.parametrize("kv", ["f16", "bf16", "q8_0"])
def test_shift_over_each_cache_type(kv, tmp_path_factory):
    """A shift over an f16 / bf16 / q8_0 cache (kvshift reads and writes the stored type): the values move exactly,
    the rotated keys keep each rope pair's length to the type's rounding, and decoding goes on."""
    from tilellm.quant.kv import kv_load

    dec = decoder("llama2", "reference", tmp_path_factory, kv=kv)
    dec.reset()
    dec.eval(list(range(1, N_CTX + 1)))
    k0, v0 = kv_load(dec.k_cache).copy(), kv_load(dec.v_cache).copy()
    dec.shift_context(5, 11)
    v1, k1 = kv_load(dec.v_cache), kv_load(dec.k_cache)
    assert np.array_equal(v1[:, 5:N_CTX - 11], v0[:, 16:N_CTX]) and np.array_equal(k1[:, :5], k0[:, :5])
    norms = [np.hypot(k[..., 0::2].astype(np.float64), k[..., 1::2]) for k in (k1[:, 5:N_CTX - 11], k0[:, 16:N_CTX])]
    tol = {"f16": 2e-3, "bf16": 1.6e-2, "q8_0": 0.05}[kv]
    np.testing.assert_allclose(norms[0], norms[1], rtol=tol, atol=tol * float(np.abs(k0).max()))
    assert np.isfinite(dec.eval([3])).all()
