"""Shared test helpers: where the fixture models live, and which backends this machine runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
LLAMA2_TYPES = ["f32", "bf16", "q8_0", "q4_0", "q4_1"]
MICRO_Q8 = DATA / "llama2-micro-q8_0.gguf"  # the serving tests' model


def fixture_path(name: str) -> Path:
    p = DATA / name
    if not p.exists():
        pytest.skip(f"fixture {name} is not in tests/data")
    return p


def kernel_backends() -> list[str]:
    """Every compiled kernel variant this CPU can run."""
    from tilellm import backend

    return [b for b in backend.available() if b != "reference"]


@pytest.fixture(scope="session")
def llama2_refs():
    return {t: np.load(DATA / f"llama2-micro-{t}.npz") for t in LLAMA2_TYPES}


def full_logit_checks(logits: np.ndarray, ref, src: str, i: int, atol: float) -> None:
    """Logits [T, V] of prompt i against reference `src` of a fixture .npz: top-32, sampled ids, logsumexp, last row."""
    top = ref[f"{src}_top32_ids_p{i}"]
    np.testing.assert_allclose(np.take_along_axis(logits, top, -1), ref[f"{src}_top32_logits_p{i}"], atol=atol, rtol=0)
    np.testing.assert_allclose(logits[:, ref["sample_ids"]], ref[f"{src}_sample_logits_p{i}"], atol=atol, rtol=0)
    mx = logits.max(-1)
    lse = np.log(np.exp(logits - mx[:, None]).sum(-1)) + mx
    np.testing.assert_allclose(lse, ref[f"{src}_logsumexp_p{i}"], atol=atol, rtol=0)
    np.testing.assert_allclose(logits[-1], ref[f"{src}_last_logits_p{i}"], atol=atol, rtol=0)


def check_prompt_logits(m, ref, prompts, src: str = "hfdq", atol: float = 1e-4) -> None:
    """Every position's logits of each prompt against reference `src` (full_logit_checks) and its argmax."""
    for i in prompts:
        m.reset()
        logits = m.eval(ref[f"token_ids_p{i}"], logits_all=True)
        full_logit_checks(logits, ref, src, i, atol=atol)
        assert np.array_equal(logits.argmax(-1), ref[f"{src}_top32_ids_p{i}"][:, 0])


def check_greedy_continuation(m, ref, prompts, label: str = "", src: str = "hfdq") -> None:
    """Greedy steps after each prompt equal reference `src`'s, up to the first near-tie (top-2 gap < 1e-3)."""
    for i in prompts:
        m.reset()
        logits = m.eval(ref[f"token_ids_p{i}"])
        want, gaps = ref[f"{src}_gen_ids_p{i}"], ref[f"{src}_gen_top2_gap_p{i}"]
        for step in range(len(want)):
            if gaps[step] < 1e-3:  # a near-tie: either token is right, and the rest diverges
                break
            got = int(np.argmax(logits))
            assert got == want[step], f"{label} p{i} step {step}: {got} != {want[step]}"
            logits = m.eval([got])


_MODELS: dict = {}


def fixture_model(name: str, be: str = "reference", n_batch: int = 512):
    """The model of fixture `name`.gguf on backend `be` (n_ctx 256), cached per session and reset."""
    from tilellm import backend as backends
    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.llm.models.architectures import model_class

    key = (name, be, n_batch)
    if key not in _MODELS:
        f = open_gguf(fixture_path(f"{name}.gguf"))
        # the fixtures' references (transformers, llama.cpp) were made with an f32 KV cache: compare like with like
        _MODELS[key] = model_class(f.arch)(f, backends.get(be, n_threads=2), n_ctx=256, n_batch=n_batch,
                                           type_k="f32", type_v="f32")
    m = _MODELS[key]
    m.reset()
    return m


def script_module(name: str, path: Path | None = None):
    """scripts/<name>.py (or the file at `path`) as a module, loaded once and registered under `name` (the scripts
    folder is not a package; dataclasses look their module up by name)."""
    import importlib.util
    import sys

    if name not in sys.modules:
        path = path or Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return sys.modules[name]


def synthetic_module():
    """scripts/make_synthetic_gguf.py as a module."""
    return script_module("make_synthetic_gguf")


def synthetic_gguf(path: Path, **kw) -> Path:
    """A seeded random LLaMA-shaped GGUF written to `path` (make_synthetic_gguf.write_synthetic_gguf's arguments)."""
    return Path(synthetic_module().write_synthetic_gguf(path, **kw))


def need_data(p: Path) -> Path:
    """`p`, or skip the test when that file is not in tests/data."""
    if not p.exists():
        pytest.skip(f"{p.name} not in tests/data")
    return p


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A very small synthetic q8_0 LLaMA (1 layer, vocab 300, context 256): fast enough for multi-config runs."""
    p = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    return synthetic_gguf(p, hidden=64, ffn=64, heads=2, kv_heads=1, vocab=300, layers=1, ctx=256, wtype="q8_0")


@pytest.fixture(scope="session")
def long_synth(tmp_path_factory) -> Path:
    """A tiny synthetic q8_0 LLaMA with a long context (8192: slow enough generation to interrupt)."""
    p = tmp_path_factory.mktemp("synth") / "tiny.gguf"
    return synthetic_gguf(p, hidden=64, ffn=128, heads=4, kv_heads=2, vocab=512, layers=2, ctx=8192, wtype="q8_0",
                          seed=1)


def run_main(main, argv: list[str]) -> tuple[int, str, str]:
    """A command-line tool's `main(argv, stdout=, stderr=)` in-process: (exit status, stdout, stderr)."""
    import io

    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def stub_gguf(path: Path, arch: str, ctx: int = 64, rows: int = 4) -> Path:
    """A GGUF with only an architecture, a context length and an f32 embedding (for architecture errors)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(ctx)
    w.add_tensor("token_embd.weight", np.zeros((rows, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def micro_q8_ref():
    """The llama2-micro q8_0 fixture loaded once per module on one thread: the single-sequence reference the
    serving tests compare their engines with."""
    import tilellm

    with tilellm.load(str(MICRO_Q8), n_threads=1) as m:
        yield m
