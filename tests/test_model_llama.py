"""LLaMA forward pass against Hugging Face transformers and llama.cpp (the shared fixtures).

reference backend (dequantize, float32): within 1e-4 of `hf` (f32 file) / `hfdq` (other types),
same argmax everywhere, same greedy continuation up to near-ties.
kernel backends (activations quantized like llama.cpp): at least as close to `hfdq` as llama.cpp is.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import LLAMA2_TYPES, fixture_path, kernel_backends
from conftest import full_logit_checks as _full_checks

from tilellm import backend as backends
from tilellm.llm.gguf.reader import open_gguf
from tilellm.llm.models.llama import LlamaModel
from tilellm.quant import GGMLType

PROMPTS = range(4)
_models: dict = {}


def _model(t: str, be: str, n_batch: int = 512) -> LlamaModel:
    key = (t, be, n_batch)
    if key not in _models:
        f = open_gguf(fixture_path(f"llama2-micro-{t}.gguf"))
        _models[key] = LlamaModel(f, backends.get(be, n_threads=2), n_ctx=256, n_batch=n_batch,
                                    type_k="f32", type_v="f32")
    m = _models[key]
    m.reset()
    return m


def _src(t: str) -> str:
    return "hf" if t == "f32" else "hfdq"


@pytest.mark.parametrize("t", LLAMA2_TYPES)
def test_reference_backend_matches_transformers(t, llama2_refs):
    ref, src = llama2_refs[t], _src(t)
    m = _model(t, "reference", n_batch=64)  # P3 (110 tokens) needs two batches
    for i in PROMPTS:
        m.reset()
        logits = m.eval(ref[f"token_ids_p{i}"], logits_all=True)
        _full_checks(logits, ref, src, i, atol=1e-4)
        assert np.array_equal(logits.argmax(-1), ref[f"{src}_top32_ids_p{i}"][:, 0])


@pytest.mark.parametrize("t", LLAMA2_TYPES)
def test_reference_greedy_continuation(t, llama2_refs):
    ref, src = llama2_refs[t], _src(t)
    m = _model(t, "reference")
    for i in PROMPTS:
        m.reset()
        logits = m.eval(ref[f"token_ids_p{i}"])
        want, gaps = ref[f"{src}_gen_ids_p{i}"], ref[f"{src}_gen_top2_gap_p{i}"]
        for step in range(len(want)):
            got = int(np.argmax(logits))
            if gaps[step] < 1e-3:  # a near-tie: either token is right, and the rest diverges
                break
            assert got == want[step], f"p{i} step {step}: {got} != {want[step]}"
            logits = m.eval([got])


def test_batching_and_incremental_eval_agree(llama2_refs):
    """Prefill in one batch, in 7-token batches, and token by token: the same logits."""
    ids = llama2_refs["q8_0"]["token_ids_p3"][:40]
    a = _model("q8_0", "reference").eval(ids, logits_all=True)
    b = _model("q8_0", "reference", n_batch=7).eval(ids, logits_all=True)
    m = _model("q8_0", "reference")
    c = np.stack([m.eval([x]) for x in ids])
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
    np.testing.assert_allclose(a, c, atol=2e-5, rtol=0)


# llama.cpp vs hfdq on these files over the whole vocabulary at every prompt position: max and
# token-weighted mean |Δlogit| from the fixtures' compare.json (rows "lcpp_vs_hfdq", 4 prompts).
LLAMA_CPP_DELTA = {"f32": (1.210e-05, 1.3e-06), "bf16": (4.402e-02, 6.59e-03), "q8_0": (1.598e-01, 2.249e-02),
                   "q4_0": (1.624e-01, 2.247e-02), "q4_1": (1.635e-01, 2.331e-02)}


def _whole_vocab_delta(t: str, be: str, refs) -> tuple[float, float]:
    """max / mean |Δ| of backend `be` against hfdq over every logit of every prompt position.

    The npz files hold only summaries of hfdq's logits, so the full rows come from our reference
    backend, which test_reference_backend_matches_transformers pins to hfdq within 1e-4 (in
    practice ~1e-5, far below the ~2e-2 differences measured here).
    """
    ref = refs[t]
    mref, m = _model(t, "reference"), _model(t, be)
    mx, tot, cnt = 0.0, 0.0, 0
    for i in PROMPTS:
        mref.reset()
        m.reset()
        want = mref.eval(ref[f"token_ids_p{i}"], logits_all=True)
        d = np.abs(m.eval(ref[f"token_ids_p{i}"], logits_all=True) - want)
        mx, tot, cnt = max(mx, float(d.max())), tot + float(d.sum(dtype=np.float64)), cnt + d.size
    return mx, tot / cnt


@pytest.mark.parametrize("be", kernel_backends())
@pytest.mark.parametrize("t", LLAMA2_TYPES)
def test_kernel_backends_as_close_as_llama_cpp(t, be, llama2_refs):
    mx, mean = _whole_vocab_delta(t, be, llama2_refs)
    lmx, lmean = LLAMA_CPP_DELTA[t]
    if t == "f32":  # f32 needs no activation rounding: stay at float32 round-off
        assert mx < 1e-4 and mean < 1e-5, (mx, mean)
        return
    if t == "bf16" and backends.get(be).lib.act_type(GGMLType.BF16) == GGMLType.BF16:
        lmean = _bf16_rounding_floor(llama2_refs)
    assert mean <= lmean, f"{be}/{t}: mean |Δ| {mean:.4g} > llama.cpp's {lmean:.4g}"
    assert mx <= 2 * lmx, f"{be}/{t}: max |Δ| {mx:.3g} > 2 x llama.cpp's {lmx:.3g}"


# bf16 weights on backends that round activations to bf16 (avx512's vdpbf16ps default, sme with
# TILELLM_SME_BF16=bfmopa) do what llama.cpp does, and there the recorded 6.59e-3 is not a bar the
# algorithm can be held to: bf16 round-to-nearest-even activations with EXACT (float64) sums and
# everything else exact give 6.605e-3 on this file, so llama.cpp's recorded run beat the ideal of
# its own numerics by summation order alone. That order is noise at this scale: mean |avx512 -
# exact-sum emulation| is 2.1e-3 over the logits. Measured (whole vocabulary, 4 prompts, vs hfdq):
# avx512 vdpbf16ps 6.597e-3 (dot-product tiles) / 6.6077e-3 (packed prompt kernel: the 110-token
# prompt sums each k in one chain), exact-sum emulation 6.6027e-3, the float32 emulations below
# 6.6075e-3 (numpy's matmul) and 6.6205e-3 (a dot product in k order), llama-cpp-python 0.3.36 on
# the same CPU 6.654e-3 (f16 KV cache, its default) / 6.602e-3 (f32 KV), fixture's llama.cpp
# 6.59e-3. A float32-accumulating kernel lands on either side of the exact-sum value by order
# alone, so such backends are held to the larger of two float32 emulations of the same numerics
# (bf16-rounded activations, bf16 weights, float32 sums in numpy's matmul order and in k order):
# they may add no error beyond the activation rounding llama.cpp also does and float32 sums.
_floor: dict = {}


def _bf16_rounding_floor(refs) -> float:
    """Whole-vocabulary mean |Δ| vs hfdq of the reference model with every bf16-weight matmul's
    activations rounded to bf16 (round to nearest even, f32 denormals to zero as vcvtne2ps2bf16
    does), multiplied by the bf16 weights (exact in float32) and summed in float32, the larger of
    two orders: numpy's matmul, and each dot product in k order."""
    if "bf16" not in _floor:
        from tilellm.backend.reference import ReferenceBackend

        class _Bf16Acts(ReferenceBackend):
            in_k_order = False

            def matmul(self, weight, x, out=None):
                xa = x.x if hasattr(x, "x") else x
                if weight.type != GGMLType.BF16:
                    return super().matmul(weight, xa, out)
                u = xa.astype(np.float32).view(np.uint32).astype(np.uint64)
                xb = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
                xb = np.where(np.abs(xa) < np.finfo(np.float32).tiny, np.float32(0), xb).astype(np.float32)
                wd = weight.dequantize().astype(np.float32)
                if self.in_k_order:
                    xb2 = xb.reshape(-1, xb.shape[-1])
                    r = np.zeros((xb2.shape[0], wd.shape[0]), np.float32)
                    for p in range(xb2.shape[1]):
                        r += xb2[:, p:p + 1] * wd[:, p]  # bf16 x bf16 is exact in float32
                    r = r.reshape(*xb.shape[:-1], wd.shape[0])
                else:
                    r = xb @ wd.T
                if out is None:
                    return r
                out[...] = r
                return out

        ref = refs["bf16"]
        mref = _model("bf16", "reference")
        floors = []
        for in_k_order in (False, True):
            be = _Bf16Acts()
            be.in_k_order = in_k_order
            emu = LlamaModel(open_gguf(fixture_path("llama2-micro-bf16.gguf")), be, n_ctx=256, n_batch=512,
                             type_k="f32", type_v="f32")
            tot, cnt = 0.0, 0
            for i in PROMPTS:
                emu.reset()
                mref.reset()
                d = np.abs(emu.eval(ref[f"token_ids_p{i}"], logits_all=True)
                           - mref.eval(ref[f"token_ids_p{i}"], logits_all=True))
                tot, cnt = tot + float(d.sum(dtype=np.float64)), cnt + d.size
            floors.append(tot / cnt)
        _floor["bf16"] = max(floors)
    return _floor["bf16"]


def test_corrupt_weights_raise_instead_of_answering(tmp_path):
    """A NaN planted in a weight of a copy of the file: eval refuses, it does not return garbage."""
    from tilellm.errors import NumericalError

    src = fixture_path("llama2-micro-f32.gguf")
    raw = bytearray(src.read_bytes())
    # find the norm vector's bytes in the file by content, then poison its first value
    g = open_gguf(src)
    needle = g.tensors["output_norm.weight"].data.tobytes()
    g.close()
    pos = raw.find(needle)
    assert pos > 0
    raw[pos:pos + 4] = np.array([np.nan], np.float32).tobytes()
    bad = tmp_path / "nan.gguf"
    bad.write_bytes(bytes(raw))
    m = LlamaModel(open_gguf(bad), backends.get("reference"), n_ctx=64)
    with pytest.raises(NumericalError, match="non-finite logits"):
        m.eval([1, 2, 3])
