"""Hostile metadata (issue #14, findings 4-6): every hyper-parameter and tokenizer field is read through a typed
getter, so a value of the wrong type, a non-finite or out-of-range number, or a vocabulary that does not match the
embedding is a one-line GGUFError naming the key at load time — never a raw Python exception later; the KV cache
is checked against the memory left before it is allocated."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _gguf_copy import write_gguf
from conftest import fixture_path

import tilellm
from tilellm.errors import TileLLMError
from tilellm.llm.gguf.hparams import HParams
from tilellm.llm.gguf.reader import open_gguf
from tilellm.llm.models.deepseek2 import DeepSeek2HParams
from tilellm.llm.models.gemma3 import Gemma3Params
from tilellm.llm.models.memory import check_kv_cache
from tilellm.llm.models.yarn import YarnParams
from tilellm.llm.text.factory import load_tokenizer
from tilellm.quant.errors import ContextOverflowError, GGUFError

LLAMA = "llama2-micro-q8_0"


def _md(name: str = LLAMA) -> dict[str, Any]:
    f = open_gguf(fixture_path(f"{name}.gguf"))
    try:
        return dict(f.metadata)
    finally:
        f.close()


def _rows(name: str = LLAMA) -> int:
    f = open_gguf(fixture_path(f"{name}.gguf"))
    try:
        return int(f.tensors["token_embd.weight"].n_rows)
    finally:
        f.close()


def _write(dst: Path, edits: dict[str, Any], src: str = LLAMA) -> Path:
    """A copy of fixture `src` (all metadata, tensors as raw bytes) with metadata `edits` (None deletes a key),
    each value written with the GGUF type its Python type implies."""
    f = open_gguf(fixture_path(f"{src}.gguf"))
    md = {k: v for k, v in f.metadata.items() if k != "general.architecture"}
    for k, v in edits.items():
        if v is None:
            md.pop(k, None)
        else:
            md[k] = v
    write_gguf(dst, f.arch, md, dict(f.tensors))
    f.close()
    return dst


# ---------------------------------------------------------------- finding 6, through real files
@pytest.mark.parametrize("key, value", [
    ("llama.block_count", math.inf),               # inf where an integer belongs (was OverflowError)
    ("llama.block_count", True),                   # a bool is not a count (was accepted as 1)
    ("llama.embedding_length", 64.0),              # a float, even integral, is not GGUF's integer type
    ("llama.attention.layer_norm_rms_epsilon", "1e-5"),   # a string where a float belongs (was ValueError)
    ("llama.attention.layer_norm_rms_epsilon", [1e-5]),   # an array where a float belongs (was TypeError)
    ("llama.attention.layer_norm_rms_epsilon", math.inf),  # eps=+inf (was accepted)
    ("llama.attention.layer_norm_rms_epsilon", 0.0),
    ("llama.rope.freq_base", 1.0),                 # ln(base) = 0
    ("llama.rope.freq_base", math.nan),
    ("llama.context_length", -1),
    ("tokenizer.ggml.bos_token_id", math.inf),     # bos id inf (was OverflowError)
    ("tokenizer.ggml.add_bos_token", "yes"),
    ("tokenizer.ggml.token_type", ["1"] * 3),
    ("tokenizer.ggml.model", 7),
])
def test_wrong_typed_metadata_is_a_gguf_error_naming_the_key(tmp_path: Path, key: str, value: Any) -> None:
    p = _write(tmp_path / "m.gguf", {key: value})
    with pytest.raises(GGUFError) as ei:
        tilellm.load(p, n_ctx=32, backend="reference")
    msg = str(ei.value)
    assert key in msg and "\n" not in msg


def test_scores_as_strings(tmp_path: Path) -> None:
    md = _md()
    n = len(md["tokenizer.ggml.tokens"])
    p = _write(tmp_path / "m.gguf", {"tokenizer.ggml.scores": [str(i) for i in range(n)]})
    with pytest.raises(GGUFError, match="tokenizer.ggml.scores"):  # was ValueError from numpy
        tilellm.load(p, n_ctx=32, backend="reference")


def test_yarn_degenerate_settings(tmp_path: Path) -> None:
    base = {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
            "llama.rope.scaling.original_context_length": 64}
    assert tilellm.load(_write(tmp_path / "ok.gguf", base), n_ctx=32, backend="reference").generate(
        [1, 2], max_tokens=1, temperature=0).tokens
    for key in ("llama.rope.scaling.yarn_beta_fast", "llama.rope.scaling.yarn_beta_slow"):  # was ZeroDivisionError
        with pytest.raises(GGUFError, match=key):
            tilellm.load(_write(tmp_path / "b.gguf", {**base, key: 0.0}), n_ctx=32, backend="reference")
    with pytest.raises(GGUFError, match="rope.freq_base"):
        YarnParams.from_metadata({**base, "llama.rope.freq_base": 1.0}, "llama")  # not read by yarn itself
        HParams.from_metadata({**_md(), **base, "llama.rope.freq_base": 1.0}, _rows())
    with pytest.raises(GGUFError, match="yarn_attn_factor"):
        YarnParams.from_metadata({**base, "llama.rope.scaling.yarn_attn_factor": "x"}, "llama")


def test_block_count_beyond_the_tensors_is_refused_at_once(tmp_path: Path) -> None:
    """A claim of 2^31 - 1 layers was a 16 GB, minutes-long per-layer table (gemma3) before any tensor was checked."""
    import time

    md = {k.replace("llama.", "gemma3.", 1): v for k, v in _md().items()}
    md["general.architecture"] = "gemma3"
    md["gemma3.block_count"] = 2**31 - 1
    md["gemma3.attention.sliding_window"] = 16
    f = open_gguf(fixture_path(f"{LLAMA}.gguf"))

    class View:
        metadata, tensors, path, arch = md, f.tensors, "<test>", "gemma3"

    from tilellm import backend as backends
    from tilellm.llm.models.gemma3 import Gemma3Model

    t0 = time.process_time()  # CPU time: load from other processes must not count
    with pytest.raises(GGUFError, match=r"gemma3.block_count' is 2147483647 but the file has tensors for 2 blocks"):
        Gemma3Model(View(), backends.get("reference"), 32)
    assert time.process_time() - t0 < 5
    f.close()


def test_heads_must_divide(tmp_path: Path) -> None:
    md = _md()
    with pytest.raises(GGUFError, match="head_count_kv"):
        HParams.from_metadata({**md, "llama.attention.head_count_kv": md["llama.attention.head_count"] + 1}, _rows())
    with pytest.raises(GGUFError, match="rope.dimension_count"):
        HParams.from_metadata({**md, "llama.rope.dimension_count": 3}, _rows())
    md7 = {k: v for k, v in md.items() if "attention.key_length" not in k and "attention.value_length" not in k}
    with pytest.raises(GGUFError, match="embedding_length"):
        HParams.from_metadata({**md7, "llama.attention.head_count": 7, "llama.attention.head_count_kv": 7}, _rows())


@pytest.mark.parametrize("key, value", [
    ("attention.sliding_window", math.inf), ("attention.sliding_window", "512"),
    ("attention.scale", "x"), ("attention.scale", math.nan), ("final_logit_softcapping", [30.0]),
    ("final_logit_softcapping", -1.0), ("rope.local_freq_base", True), ("rope.local_freq_base", 0.5),
    ("attention.sliding_window_pattern", np.array(["a"])),
])
def test_gemma3_constants(key: str, value: Any) -> None:
    md = {"general.architecture": "gemma3", "gemma3.attention.sliding_window": 512, key: None}
    md["gemma3." + key] = value
    with pytest.raises(GGUFError, match=key):  # were TypeError / ValueError / OverflowError
        Gemma3Params.from_metadata(md, 6, 64, 4, 16)


@pytest.mark.parametrize("key, value", [
    ("expert_weights_scale", "2.5"), ("expert_weights_scale", math.inf), ("expert_weights_norm", "yes"),
    ("expert_count", 2**40), ("block_count", True), ("attention.layer_norm_rms_epsilon", [1e-6]),
    ("rope.scaling.yarn_beta_fast", 0.0),
])
def test_deepseek2_keys(key: str, value: Any) -> None:
    f = open_gguf(fixture_path("deepseek2-micro-q8_0.gguf"))
    try:
        md = dict(f.metadata)
        n = int(f.tensors["token_embd.weight"].n_rows)
        DeepSeek2HParams.from_file(md, f.tensors, n)  # the fixture itself is fine
        if key.startswith("rope.scaling"):
            md.update({"deepseek2.rope.scaling.type": "yarn", "deepseek2.rope.scaling.factor": 4.0,
                       "deepseek2.rope.scaling.original_context_length": 64})
        md["deepseek2." + key] = value
        with pytest.raises(GGUFError, match=key):
            DeepSeek2HParams.from_file(md, f.tensors, n)
    finally:
        f.close()


def test_tokenizer_fields_in_memory() -> None:
    md = _md()
    load_tokenizer(md)
    for key, value in [("tokenizer.ggml.scores", ["x"] * len(md["tokenizer.ggml.tokens"])),
                       ("tokenizer.ggml.scores", np.full(len(md["tokenizer.ggml.tokens"]), 1e300)),
                       ("tokenizer.ggml.eos_token_id", float("nan")), ("tokenizer.ggml.unknown_token_id", "0"),
                       ("tokenizer.ggml.tokens", "abc"), ("tokenizer.ggml.add_space_prefix", 2)]:
        with pytest.raises(GGUFError, match=key.replace(".", r"\.")):
            load_tokenizer({**md, key: value})


# ---------------------------------------------------------------- finding 4: vocabulary vs embedding rows
@pytest.mark.parametrize("delta", [-5, +5])
def test_vocabulary_must_match_embedding_rows(tmp_path: Path, delta: int) -> None:
    md = _md()
    n, rows = len(md["tokenizer.ggml.tokens"]), _rows()
    assert n == rows
    toks = list(md["tokenizer.ggml.tokens"])
    toks = toks[:n + delta] if delta < 0 else toks + [f"<extra_{i}>" for i in range(delta)]
    edits = {"tokenizer.ggml.tokens": toks,
             "tokenizer.ggml.token_type": md["tokenizer.ggml.token_type"][:n + delta].tolist() + [1] * max(0, delta),
             "tokenizer.ggml.scores": md["tokenizer.ggml.scores"][:n + delta].tolist() + [0.0] * max(0, delta)}
    with pytest.raises(GGUFError) as ei:  # was a raw ValueError mid-generation, or blamed the caller's input
        tilellm.load(_write(tmp_path / "v.gguf", edits), n_ctx=32, backend="reference")
    assert str(n + delta) in str(ei.value) and str(rows) in str(ei.value)


def test_token_id_out_of_range_names_id_and_vocabulary() -> None:
    with tilellm.load(fixture_path(f"{LLAMA}.gguf"), n_ctx=32, backend="reference") as m:
        for bad in (m.n_vocab, -1, 2**40):
            for call in (lambda: m.eval([1, bad]), lambda: m.generate([1, bad], max_tokens=1),
                         lambda: m.detokenize([bad])):
                with pytest.raises(ValueError, match=f"token id {bad} .*vocabulary of {m.n_vocab}"):
                    call()


# ---------------------------------------------------------------- finding 5: KV cache bound
def test_kv_cache_check_names_bytes_and_suggests_smaller_context() -> None:
    with pytest.raises(ContextOverflowError, match=r"n_ctx=1000 needs 2000000 bytes .* only 500000 bytes") as ei:
        check_kv_cache(2_000_000, 1000, 4096, available=500_000)
    assert "smaller n_ctx (at most about 250)" in str(ei.value)
    check_kv_cache(400_000, 1000, 4096, available=500_000)  # fits: no error


def test_huge_context_is_refused_before_allocation() -> None:
    with pytest.raises(ContextOverflowError, match="KV cache.*bytes.*smaller n_ctx"):  # was MemoryError 1 PiB
        with pytest.warns(RuntimeWarning, match="training context"):
            tilellm.load(fixture_path(f"{LLAMA}.gguf"), n_ctx=10**12, backend="reference")


def test_file_claiming_a_huge_context(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="context_length"):  # 2^40: no model's size
        tilellm.load(_write(tmp_path / "c.gguf", {"llama.context_length": 2**40}), n_ctx=0, backend="reference")
    p = _write(tmp_path / "d.gguf", {"llama.context_length": 2**31 - 1})
    with pytest.raises(ContextOverflowError, match="KV cache"):
        tilellm.load(p, n_ctx=0, backend="reference")


def test_context_beyond_training_warns_like_llama_cpp() -> None:
    md = _md()
    n_train = int(md["llama.context_length"])
    with pytest.warns(RuntimeWarning, match=rf"n_ctx \({2 * n_train}\) > the model's training context \({n_train}\)"):
        tilellm.load(fixture_path(f"{LLAMA}.gguf"), n_ctx=2 * n_train, backend="reference").close()


def test_every_error_is_documented() -> None:
    assert issubclass(GGUFError, TileLLMError) and issubclass(ContextOverflowError, TileLLMError)
