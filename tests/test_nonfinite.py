"""Non-finite values are never silent (issue #14, finding 2).

Before: the activation quantizers skipped NaN in a group's max and turned NaN / inf into 0, so a NaN or inf
scale in a quantized weight block (or any NaN reaching a quantized matmul) gave logits of exactly 0.0 and the
model emitted token 0 with exit code 0 on the kernel backends. Now a NaN or inf going into int8 activations is
TL_ENONFINITE from C and `NumericalError` naming the input in Python, on every kernel variant (and
$TILELLM_CPU_CAP=avx2), through the raw kernel API, the backend `matmul`, the fused norm / SwiGLU / decode
steps, `tilellm.load(...).generate` and `llm-run`; the reference backend and float weights propagate NaN into
the logits, which the model refuses (`NumericalError` as well).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path, kernel_backends

import tilellm
from tilellm import backend as backends
from tilellm import kernels
from tilellm.errors import NumericalError
from tilellm.llm.cli import run as cli
from tilellm.llm.gguf.reader import open_gguf
from tilellm.llm.models.architectures import model_class
from tilellm.quant import GGMLType as T
from tilellm.quant import TensorView

ROOT = Path(__file__).resolve().parent.parent
# numpy's own warnings on the NaN weights (reference backend, numpy ops) are expected here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
VARIANTS = kernel_backends()  # every compiled kernel variant this CPU runs
BACKENDS = backends.available()  # those + reference
QTYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q4_K, T.Q5_K, T.Q6_K]
FTYPES = [T.F32, T.F16, T.BF16]
VALUES = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}

# Byte offsets of the fp16 scales inside one block of each quantized type (ggml's block layouts): d, and
# m / dmin where the type has one; q6_K keeps its d after ql[128], qh[64] and scales[16].
SCALE_OFFSETS = {T.Q8_0: (0,), T.Q4_0: (0,), T.Q5_0: (0,), T.Q4_1: (0, 2), T.Q5_1: (0, 2), T.Q4_K: (0, 2),
                 T.Q5_K: (0, 2), T.Q6_K: (208,)}
BLOCK = {T.Q8_0: (32, 34), T.Q4_0: (32, 18), T.Q5_0: (32, 22), T.Q4_1: (32, 20), T.Q5_1: (32, 24),
         T.Q4_K: (256, 144), T.Q5_K: (256, 176), T.Q6_K: (256, 210)}
F16_BITS = {"nan": 0x7E00, "inf": 0x7C00, "-inf": 0xFC00, "one": 0x3C00}


def _lib(variant: str, rounding: str = "fine") -> kernels.KernelLib:
    return kernels.load(variant, 2, act_rounding=rounding)


def _x(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


# ------------------------------------------------------------------ the C quantizers, through KernelLib
@pytest.mark.parametrize("rounding", ["fine", "ggml"])
@pytest.mark.parametrize("value", list(VALUES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_prepare_refuses_nonfinite_activations(variant, value, rounding):
    lib = _lib(variant, rounding)
    for t in [t for t in QTYPES if lib.supports(t)]:
        k = 512
        x = _x(5, k)
        x[3, 300] = VALUES[value]
        with pytest.raises(NumericalError, match=rf"tl_act_prepare: the activations are not finite: \[3, 300\] is "
                                                 rf"{value} \(\d NaN and \d inf among 2560 values\).*{t.name}"):
            lib.prepare(t, x)
        x[3, 300] = 0.0
        lib.prepare(t, x)  # the same rows, finite: fine


@pytest.mark.parametrize("rounding", ["fine", "ggml"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_c_status_and_the_bytes_it_leaves(variant, rounding):
    """The C ABI itself: tl_act_prepare returns TL_ENONFINITE and still writes the buffer, the non-finite group
    (16 values; the 32- or 256-value span in the ggml rounding) with scale NaN and quants 0, so a caller that
    ignored the status would get NaN products, not a silent 0; every other group exactly as before."""
    lib = _lib(variant, rounding)
    ffi = lib.ffi
    k, n = 512, 3
    for t in [t for t in (T.Q8_0, T.Q4_K) if lib.supports(t)]:
        x = _x(n, k, 3)
        x[1, 70] = np.nan
        x[2, 511] = -np.inf
        ng = k // 16
        span = {"fine": 16, "ggml": 256 if t == T.Q4_K else 32}[rounding]
        bad = np.zeros((n, ng), bool)
        bad[1, 70 // span * span // 16:(70 // span + 1) * span // 16] = True
        bad[2, 511 // span * span // 16:] = True
        nbytes = lib.lib.tl_act_bytes(lib.ctx, int(t), n, k)
        raw = np.zeros(nbytes + 64, np.uint8)
        off = -int(ffi.cast("uintptr_t", ffi.from_buffer(raw))) % 64
        buf = raw[off:off + nbytes]
        rc = lib.lib.tl_act_prepare(lib.ctx, int(t), ffi.from_buffer("float[]", x), k, n, k, ffi.from_buffer(buf), 2)
        assert rc == kernels._lib.TL_ENONFINITE == lib.lib.TL_ENONFINITE
        rows = buf.reshape(n, -1)
        d = rows[:, k:k + 4 * ng].copy().view(np.float32)
        q = rows[:, :k].view(np.int8).reshape(n, ng, 16)
        assert np.isnan(d[bad]).all() and np.isfinite(d[~bad]).all()
        assert not q[bad].any()
        clean = x.copy()
        clean[1, 70] = clean[2, 511] = 0.0
        good = lib.prepare(t, clean).buf.reshape(n, -1)
        np.testing.assert_array_equal(q[~bad], good[:, :k].view(np.int8).reshape(n, ng, 16)[~bad])
        np.testing.assert_array_equal(d[~bad], good[:, k:k + 4 * ng].copy().view(np.float32)[~bad])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_row_and_thread_is_checked(variant):
    """The check runs wherever the rows are converted: one bad value in the last row of many, on 4 threads, and
    in each position of a 16-value group (the vector quantizers' lanes)."""
    lib = _lib(variant)
    for t in [t for t in (T.Q8_0, T.Q4_1, T.Q4_K) if lib.supports(t)]:
        x = _x(64, 1024)
        x[63, 1023] = np.nan
        with pytest.raises(NumericalError, match=r"\[63, 1023\] is nan"):
            lib.prepare(t, x, n_threads=4)
        for lane in range(16):
            y = _x(1, 256)
            y[0, 160 + lane] = np.inf
            with pytest.raises(NumericalError, match=rf"\[0, {160 + lane}\] is inf"):
                lib.prepare(t, y)


@pytest.mark.parametrize("variant", VARIANTS)
def test_finite_extremes_are_still_accepted(variant):
    """Only nan and inf are refused: the largest and smallest finite floats quantize as before."""
    lib = _lib(variant)
    x = np.array([[3.4028235e38] * 16 + [-3.4028235e38] * 16, [1e-45] * 32, [0.0] * 32], np.float32)
    for t in [t for t in QTYPES if lib.supports(t) and t in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0)]:
        p = lib.prepare(t, x)
        d = p.buf.reshape(3, -1)[:, 32:40].copy().view(np.float32)  # the 2 scales of each row
        assert np.isfinite(d).all() and d[0, 0] > 0 and d[2, 0] == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_float_weights_propagate_nan(variant):
    """f32 / f16 / bf16 weights take float activations, which hold nan / inf: the product is non-finite (as
    numpy's), never a finite number that hides it; the model then refuses the logits."""
    lib = _lib(variant)
    f = open_gguf(fixture_path("llama2-micro-f32.gguf"))
    w = f.tensors["blk.0.attn_q.weight"]
    x = _x(2, w.k)
    x[1, 5] = np.nan
    be = backends.get(variant, 2)
    for t in [t for t in FTYPES if lib.supports(t)]:
        wt = TensorView(w.name, w.shape, t, _convert_f32(w, t))
        y = be.matmul(wt, x)
        assert np.isfinite(y[0]).all() and np.isnan(y[1]).all(), t


def _convert_f32(w: TensorView, t: T) -> np.ndarray:
    a = w.data.view(np.float32)
    if t == T.F32:
        return a.view(np.uint8).copy()
    if t == T.F16:
        return a.astype(np.float16).view(np.uint8).copy()
    return (a.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).copy()  # bf16 by truncation


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_rms_norm_names_what_was_not_finite(variant):
    lib = _lib(variant)
    k = 256
    x, w = _x(3, k), np.ones(k, np.float32)
    for t in [t for t in (T.Q8_0, T.Q4_K) if lib.supports(t)]:
        bad = x.copy()
        bad[2, 7] = np.nan
        with pytest.raises(NumericalError, match=r"tl_act_prepare_rms: the input rows of the RMS norm are not "
                                                 r"finite: \[2, 7\] is nan"):
            lib.prepare_rms(t, bad, w, 1e-5)
        bw = w.copy()
        bw[9] = np.inf
        with pytest.raises(NumericalError, match=r"the RMS norm weights are not finite: \[9\] is inf"):
            lib.prepare_rms(t, x, bw, 1e-5)
        big, xb = w.copy(), np.ones((1, k), np.float32)
        big[11], xb[0, 11] = 3e38, 1000.0  # finite inputs whose product overflows: x * r = 16 times 3e38
        with pytest.raises(NumericalError, match=r"the RMS-normalised rows are not finite: \[0, 11\] is inf"):
            lib.prepare_rms(t, xb, big, 1e-5)
        lib.prepare_rms(t, x, w, 1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_swiglu_names_what_was_not_finite(variant):
    lib = _lib(variant)
    g, u = _x(2, 512, 1), _x(2, 512, 2)
    for t in [t for t in (T.Q8_0, T.Q6_K) if lib.supports(t)]:
        bg = g.copy()
        bg[1, 100] = np.nan
        with pytest.raises(NumericalError, match=r"tl_act_prepare_swiglu: the gate activations are not finite: "
                                                 r"\[1, 100\] is nan"):
            lib.prepare_swiglu(t, bg, u)
        bu = u.copy()
        bu[0, 3] = -np.inf
        with pytest.raises(NumericalError, match=r"the up activations are not finite: \[0, 3\] is -inf"):
            lib.prepare_swiglu(t, g, bu)
        big_g, big_u = g.copy(), u.copy()
        big_g[0, 0], big_u[0, 0] = 3e38, 3e38  # silu(3e38) * 3e38 overflows
        with pytest.raises(NumericalError, match=r"the SwiGLU rows silu\(gate\) \* up are not finite: \[0, 0\] is inf"):
            lib.prepare_swiglu(t, big_g, big_u)
        lib.prepare_swiglu(t, g, u)


# ------------------------------------------------------------------ the backend API: weights and activations
def _patched_view(w: TensorView, row: int, block: int, value: str, which: int = 0) -> TensorView:
    """A copy of quantized weights `w` with scale `which` of one block set to the fp16 `value`."""
    data = w.data.copy()
    off = block * BLOCK[w.type][1] + SCALE_OFFSETS[w.type][which]
    data[row, off:off + 2] = np.array([F16_BITS[value]], np.uint16).view(np.uint8)
    return TensorView(w.name, w.shape, w.type, data)


QFILES = ["llama2-micro-q8_0", "llama2-micro-q4_0", "llama2-micro-q4_1", "llama2-micro-q4_k_m"]


def _qweights():
    """One real quantized matrix of every type the fixtures hold."""
    out: dict[T, TensorView] = {}
    for name in QFILES:
        f = open_gguf(fixture_path(f"{name}.gguf"))
        for tv in f.tensors.values():
            if tv.type in SCALE_OFFSETS and tv.type not in out and len(tv.shape) == 2:
                out[tv.type] = tv
    return out


@pytest.mark.parametrize("be_name", BACKENDS)
def test_backend_matmul_never_hides_a_nonfinite_weight_scale(be_name):
    """A NaN / inf scale in one block of one weight row: that row's outputs are non-finite on every backend (the
    model refuses them), every other row is unchanged."""
    be = backends.get(be_name, 2)
    for t, w in _qweights().items():
        x = _x(3, w.k, 5)
        want = be.matmul(w, x)
        assert np.isfinite(want).all()
        for which in range(len(SCALE_OFFSETS[t])):
            for value in ("nan", "inf"):
                row, block = min(3, w.n_rows - 1), w.k // BLOCK[t][0] - 1
                got = be.matmul(_patched_view(w, row, block, value, which), x)
                assert not np.isfinite(got[:, row]).any(), (t, which, value)
                others = np.delete(np.arange(w.n_rows), row)
                np.testing.assert_array_equal(got[:, others], want[:, others])


@pytest.mark.parametrize("be_name", VARIANTS)
def test_backend_matmul_refuses_nonfinite_activations(be_name):
    be = backends.get(be_name, 2)
    for t, w in _qweights().items():
        x = _x(2, w.k)
        x[1, 2] = np.nan
        with pytest.raises(NumericalError, match=r"not finite: \[1, 2\] is nan"):
            be.matmul(w, x)
        with pytest.raises(NumericalError, match=r"not finite: \[1, 2\] is nan"):
            be.prepare(x, t)


@pytest.mark.parametrize("be_name", VARIANTS)
def test_fused_decode_layer_refuses_nonfinite(be_name):
    """The one-call decode step (tl_layer_run) passes its steps' TL_ENONFINITE on."""
    f = open_gguf(fixture_path("llama2-micro-q8_0.gguf"))
    m = model_class(f.arch)(f, backends.get(be_name, 2), n_ctx=16)
    plans = m._layer_plans()
    assert plans is not None
    h = np.full(m.hparams.n_embd, np.nan, np.float32)
    half = plans[0].half
    cos, sin = np.ones(half, np.float32), np.zeros(half, np.float32)
    with pytest.raises(NumericalError, match=r"tl_layer_run: activations on their way to int8 are not finite"):
        m.backend.decode_layer(plans[0], h, cos, sin, [0])


# ------------------------------------------------------------------ whole models: load(...).generate, llm-run
def _patch_file(src: Path, dst: Path, tensor: str, value: str, row: int = 0, block: int = 0, which: int = 0) -> None:
    """A copy of GGUF `src` with one fp16 block scale of `tensor` set to `value`."""
    f = open_gguf(src)
    ti = next(i for i in f.tensor_infos if i.name == tensor)
    t = ti.type
    f.close()
    raw = bytearray(src.read_bytes())
    off = ti.offset + row * ti.row_bytes + block * BLOCK[t][1] + SCALE_OFFSETS[t][which]
    raw[off:off + 2] = int(F16_BITS[value]).to_bytes(2, "little")
    dst.write_bytes(bytes(raw))


def _tensors_to_poison(src: Path) -> list[tuple[str, int, str]]:
    """(tensor, row, value) to poison in a copy of `src`: in the llama2 fixtures a layer weight of the first and
    of the last layer, the feed-forward output, the logits' own matrix and token 1's embedding row (BOS is fed),
    each with NaN, two with inf too; in the other architectures the first quantized matrix of layer 0 and the
    output. Quantized tensors only (the float ones are test_model_llama's)."""
    f = open_gguf(src)
    n = f.metadata[f"{f.arch}.block_count"]

    def quantized(name: str) -> bool:
        return name in f.tensors and f.tensors[name].type in SCALE_OFFSETS and len(f.tensors[name].shape) == 2

    if src.name.startswith("llama2"):
        names = [("blk.0.attn_q.weight", 0), ("output.weight", 7), (f"blk.{n - 1}.ffn_down.weight", 5),
                 ("token_embd.weight", 1), ("blk.0.attn_k.weight", 2), ("blk.0.ffn_up.weight", 3)]
    else:
        first = next(t for t in f.tensors if t.startswith("blk.0.") and quantized(t))
        names = [(first, 1), ("output.weight", 4)]
    out = [(t, r, "nan") for t, r in names if quantized(t)]
    out += [(t, r, "inf") for t, r, _ in out[:2]]
    f.close()
    return out


QFILES_ALL = QFILES + ["llama3-micro-q4_0", "qwen2-micro-q8_0", "deepseek2-micro-q8_0", "deepseek2-lite-micro-q8_0"]


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """{(fixture, tensor, value): path} of one-block-scale-poisoned copies."""
    d = tmp_path_factory.mktemp("nonfinite")
    out = {}
    for name in QFILES_ALL:
        src = fixture_path(f"{name}.gguf")
        for tensor, row, value in _tensors_to_poison(src):
            p = d / f"{name}-{tensor}-{value}.gguf"
            _patch_file(src, p, tensor, value, row=row)
            out[(name, tensor, value)] = p
    return out


@pytest.mark.parametrize("be_name", BACKENDS)
@pytest.mark.parametrize("name", QFILES_ALL)
def test_generate_refuses_a_poisoned_weight(poisoned, name, be_name):
    """A NaN or inf scale in any one block: generate raises NumericalError on every backend, for a prompt
    (batched matmuls) and a one-token prompt (the fused decode step on kernel backends); never token 0."""
    cases = [(t, v) for (n, t, v) in poisoned if n == name]
    assert cases
    for tensor, value in cases:
        with tilellm.load(poisoned[(name, tensor, value)], n_ctx=32, n_threads=2, backend=be_name) as m:
            for prompt in ([i % m.n_vocab for i in (1, 450, 4996, 17354)], [1]):
                with pytest.raises(NumericalError, match="not finite|non-finite"):
                    m.generate(prompt, max_tokens=2, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("be_name", BACKENDS)
def test_a_finite_patch_still_generates(tmp_path, be_name):
    """The control: the same patch with a finite scale (1.0) loads and generates normally."""
    p = tmp_path / "one.gguf"
    _patch_file(fixture_path("llama2-micro-q4_0.gguf"), p, "blk.0.attn_q.weight", "one")
    with tilellm.load(p, n_ctx=32, n_threads=2, backend=be_name) as m:
        out = m.generate([1, 450], max_tokens=3, temperature=0, ignore_eos=True)
    assert len(out.tokens) == 3


@pytest.mark.parametrize("be_name", BACKENDS)
def test_llm_run_exits_with_one_line_error(poisoned, be_name):
    path = poisoned[("llama2-micro-q4_0", "blk.0.attn_q.weight", "nan")]
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(path), "-p", "Once upon a time", "-n", "4", "--temp", "0", "--backend", be_name,
                     "-t", "2"], stdout=out, stderr=err)
    assert code == 1, err.getvalue()
    msg = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    assert len(msg) == 1 and ("not finite" in msg[0] or "non-finite" in msg[0]), err.getvalue()
    assert "Traceback" not in err.getvalue()


@pytest.mark.skipif("avx2" not in kernels.compiled(), reason="no avx2 kernels here")
def test_llm_run_capped_to_avx2(poisoned):
    """$TILELLM_CPU_CAP=avx2 (read at import, hence a child process): the default backend is avx2, and it
    refuses the poisoned file with exit code 1."""
    path = poisoned[("llama2-micro-q4_k_m", "blk.0.attn_q.weight", "inf")]
    env = {**os.environ, "TILELLM_CPU_CAP": "avx2"}
    env.pop("TILELLM_BACKEND", None)
    r = subprocess.run([sys.executable, "-m", "tilellm.llm.cli.run", str(path), "-p", "Hello", "-n", "3",
                        "--temp", "0", "-t", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and ("not finite" in errs[0] or "non-finite" in errs[0]), r.stderr
