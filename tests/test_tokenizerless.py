"""A GGUF without a tokenizer (synthetic benchmark files): load(tokenizer=None) evaluates ids, llm-bench runs,
text methods raise a clear error, and the default load still insists on a tokenizer."""
import io

import gguf
import numpy as np
import pytest
from conftest import fixture_path

import tilellm
from tilellm.errors import GGUFError, UnsupportedError
from tilellm.llm.cli import bench
from tilellm.llm.gguf.reader import open_gguf


@pytest.fixture(scope="module")
def no_tok(tmp_path_factory):
    src = open_gguf(fixture_path("llama2-micro-q8_0.gguf"))
    path = tmp_path_factory.mktemp("notok") / "notok.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    p = "llama."
    for key in ("context_length", "embedding_length", "feed_forward_length", "block_count"):
        w.add_uint32(p + key, int(src.metadata[p + key]))
    w.add_uint32(p + "attention.head_count", int(src.metadata[p + "attention.head_count"]))
    w.add_uint32(p + "attention.head_count_kv", int(src.metadata[p + "attention.head_count_kv"]))
    w.add_float32(p + "attention.layer_norm_rms_epsilon", float(src.metadata[p + "attention.layer_norm_rms_epsilon"]))
    for name, t in src.tensors.items():
        if len(t.shape) == 1:  # norm vectors (f32)
            w.add_tensor(name, np.ascontiguousarray(t.data).view(np.float32).reshape(-1))
            continue
        raw = np.ascontiguousarray(t.data)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType(int(t.type)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    src.close()
    return path


def test_eval_without_tokenizer_matches_the_original(no_tok):
    ids = [1, 100, 200, 300]
    with tilellm.load(no_tok, n_ctx=64, backend="reference", tokenizer=None) as m:
        a = m.eval(ids)
        with pytest.raises(UnsupportedError, match="no tokenizer"):
            m.tokenize("hello")
    with tilellm.load(fixture_path("llama2-micro-q8_0.gguf"), n_ctx=64, backend="reference") as m:
        np.testing.assert_array_equal(a, m.eval(ids))


def test_default_load_requires_a_tokenizer(no_tok):
    with pytest.raises(GGUFError, match="tokenizer"):
        tilellm.load(no_tok, n_ctx=64)


def test_llm_bench_runs_on_a_file_without_tokenizer(no_tok):
    out, err = io.StringIO(), io.StringIO()
    rc = bench.main(["-m", str(no_tok), "-p", "8", "-n", "2", "-r", "1", "-t", "1", "--backend", "portable"],
                    stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    assert "pp8" in out.getvalue() and "tg2" in out.getvalue()
