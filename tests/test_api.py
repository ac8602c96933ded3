"""tilellm.load / Model: generation semantics on a scripted fake model, then the real fixtures."""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from conftest import need_data, stub_gguf, synthetic_module

import tilellm
from tilellm.errors import ContextOverflowError, TileLLMError, UnsupportedError
from tilellm.llm import api
from tilellm.llm.api import GenerationChunk, GenerationResult, Model

DATA = Path(__file__).parent / "data"
BOS, EOS, EOT = 1, 2, 3
N_VOCAB = 4 + 256  # 0 unk, 1 bos, 2 eos, 3 eot, then one token per byte


# ----------------------------------------------------------------------------- fakes

class ByteTokenizer:
    """Byte-level tokenizer: token 4 + b is byte b."""

    n_vocab = N_VOCAB
    bos_id, eos_id = BOS, EOS
    eog_ids = (EOS, EOT)

    def __init__(self, add_bos: bool = True) -> None:
        self.add_bos = add_bos

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        bos = self.add_bos if add_bos is None else add_bos
        return ([BOS] if bos else []) + [4 + b for b in text.encode("utf-8")]

    def token_to_piece(self, i: int) -> bytes:
        return bytes([i - 4]) if i >= 4 else [b"<unk>", b"<s>", b"</s>", b"<eot>"][i]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return b"".join(self.token_to_piece(i) for i in ids if i >= 4 or not skip_special).decode("utf-8", "replace")


class ByteStreamDecoder:
    def __init__(self, tok: ByteTokenizer) -> None:
        self.tok = tok
        self.dec = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, i: int) -> str:
        return self.dec.decode(self.tok.token_to_piece(i))

    def flush(self) -> str:
        return self.dec.decode(b"", final=True)


class ScriptedImpl:
    """A 'model' whose logits make ``script(i)`` win by a wide margin, where i counts the
    tokens after the prompt (the first eval after a reset)."""

    def __init__(self, script: Callable[[int], int], n_ctx: int = 64) -> None:
        self.script = script
        self.n_ctx, self.n_vocab = n_ctx, N_VOCAB
        self.history: list[int] = []
        self.prompt_len: int | None = None
        self.eval_calls: list[int] = []

    @property
    def n_past(self) -> int:
        return len(self.history)

    def reset(self) -> None:
        self.history, self.prompt_len = [], None

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        assert len(self.history) + len(tokens) <= self.n_ctx, "context overflow reached the model"
        self.eval_calls.append(len(tokens))
        if self.prompt_len is None:
            self.prompt_len = len(tokens)
        rows = []
        for t in tokens:
            self.history.append(int(t))
            x = np.ones(N_VOCAB, np.float32)
            x[self.script(len(self.history) - self.prompt_len)] += 50.0
            rows.append(x)
        return np.stack(rows) if logits_all else rows[-1]


class FakeFile:
    def __init__(self) -> None:
        self.arch = "llama"
        self.metadata = {"general.architecture": "llama", "llama.context_length": 64}
        self.tensors: dict = {}
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    name = "fake"
    n_threads = 1


def text_script(text: str, then: int = EOS) -> Callable[[int], int]:
    """Generates `text` byte by byte after the prompt, then `then` forever."""
    data = text.encode("utf-8")
    return lambda i: 4 + data[i] if 0 <= i < len(data) else then


def make(script: Callable[[int], int], n_ctx: int = 64, add_bos: bool = True, seed: int | None = None) -> Model:
    impl = ScriptedImpl(script, n_ctx)
    return Model(FakeFile(), impl, ByteTokenizer(add_bos), FakeBackend(), seed=seed, stream_decoder=ByteStreamDecoder)


def fresh(text: str, **kw) -> Model:
    """A model generating `text` after any prompt, then EOS."""
    return make(text_script(text), **kw)


GREEDY = dict(temperature=0.0)


# ----------------------------------------------------------------------------- generation

def test_greedy_follows_script_and_stops_at_eos() -> None:
    m = fresh("hello world")
    r = m.generate("hi", max_tokens=100, **GREEDY)
    assert isinstance(r, GenerationResult)
    assert r.text == "hello world"
    assert r.finish_reason == "stop"
    assert r.tokens == [4 + b for b in b"hello world"]  # EOS not included
    assert r.prompt_tokens == 3  # BOS + "hi"
    assert r.completion_tokens == 11
    assert str(r) == "hello world"


def test_max_tokens_gives_length() -> None:
    m = fresh("hello world")
    r = m.generate("hi", max_tokens=5, **GREEDY)
    assert (r.text, r.finish_reason, r.completion_tokens) == ("hello", "length", 5)


def test_any_eog_token_stops() -> None:
    m = make(text_script("ab", then=EOT))
    r = m.generate("x", max_tokens=50, **GREEDY)
    assert (r.text, r.finish_reason) == ("ab", "stop")


def test_stop_string_excluded_and_earliest_wins() -> None:
    m = fresh("one, two; three")
    r = m.generate("p", max_tokens=100, stop=["three", ";", "two"], **GREEDY)
    assert r.text == "one, "
    assert r.finish_reason == "stop"
    r2 = m.generate("p", max_tokens=100, stop="wo;", **GREEDY)
    assert r2.text == "one, t"
    r3 = m.generate("p", max_tokens=100, stop=["zzz", ""], **GREEDY)  # empty stop ignored
    assert r3.text == "one, two; three" and r3.finish_reason == "stop"


def test_stop_string_spanning_tokens_in_stream_is_never_leaked() -> None:
    m = fresh("abc<EN<END>xyz")
    chunks = list(m.generate("p", max_tokens=100, stop=["<END>"], stream=True, **GREEDY))
    assert all(isinstance(c, GenerationChunk) for c in chunks)
    texts = [c.text for c in chunks]
    assert "".join(texts) == "abc<EN"
    # nothing after the first "<" of the false start was released before it was known safe,
    # and no chunk ever holds part of the real stop string
    assert not any("<END" in t or t.endswith("<") for t in texts[:-1])
    assert chunks[-1].finish_reason == "stop"
    # tokens are all accounted for, including those spelling the stop string
    assert sum((c.tokens for c in chunks), []) == [4 + b for b in b"abc<EN<END>"]


def test_stream_matches_plain_and_only_last_chunk_finishes() -> None:
    m = fresh("streaming works fine")
    plain = m.generate("p", max_tokens=15, **GREEDY)
    chunks = list(m.generate("p", max_tokens=15, stream=True, **GREEDY))
    assert "".join(c.text for c in chunks) == plain.text
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert all(c.timings is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == "length" and last.timings is not None
    assert last.completion_tokens == 15 and last.prompt_tokens == 2
    assert sum((c.tokens for c in chunks), []) == plain.tokens


def test_stream_never_splits_utf8() -> None:
    text = "h\u00e9llo \U0001F600 \u65e5\u672c"
    m = fresh(text)
    chunks = list(m.generate("p", max_tokens=100, stream=True, **GREEDY))
    assert "".join(c.text for c in chunks) == text
    assert all("\ufffd" not in c.text for c in chunks)
    # the 4-byte emoji arrives as one chunk carrying its 4 tokens
    emoji = [c for c in chunks if "\U0001F600" in c.text]
    assert len(emoji) == 1 and len(emoji[0].tokens) == 4


def test_incomplete_utf8_at_the_end_is_flushed() -> None:
    m = make(text_script("a\U0001F600"))
    r = m.generate("p", max_tokens=3, **GREEDY)  # stops inside the emoji
    assert r.finish_reason == "length"
    assert r.text.startswith("a") and r.text != "a"  # the partial bytes are reported, not dropped


def test_timings_are_filled() -> None:
    r = fresh("abcdef").generate("p", max_tokens=6, **GREEDY)
    t = r.timings
    assert t.prompt_ms > 0 and t.gen_ms > 0
    assert t.prompt_tps == pytest.approx(2 / (t.prompt_ms / 1e3))
    assert t.gen_tps == pytest.approx(6 / (t.gen_ms / 1e3))


def test_prompt_evaluated_once_then_one_token_at_a_time() -> None:
    m = fresh("abcdef")
    m.generate("hello", max_tokens=4, **GREEDY)
    # the last sampled token is never evaluated (nothing would read its logits)
    assert m.decoder.eval_calls == [6, 1, 1, 1]
    assert m.n_past == 9


def test_generate_resets_between_calls() -> None:
    m = fresh("abc")
    a = m.generate("hello", max_tokens=3, **GREEDY)
    b = m.generate("hello", max_tokens=3, **GREEDY)
    assert a.text == b.text == "abc"
    assert m.n_past == 6 + 2


# ----------------------------------------------------------------------------- context

def test_prompt_longer_than_context_raises() -> None:
    m = fresh("abc", n_ctx=8)
    with pytest.raises(ContextOverflowError, match=r"^Requested tokens \(10\) exceed context window of 8$"):
        m.generate("123456789")
    assert issubclass(ContextOverflowError, ValueError)


def test_generation_stops_with_length_when_context_fills() -> None:
    m = fresh("x" * 100, n_ctx=16)
    r = m.generate("abc", max_tokens=1000, **GREEDY)
    assert r.finish_reason == "length"
    assert r.prompt_tokens + r.completion_tokens == 16
    assert max(m.decoder.eval_calls) == 4


@pytest.mark.parametrize("mt", [None, 0, -1])
def test_max_tokens_nonpositive_means_until_context_full(mt) -> None:
    m = fresh("y" * 100, n_ctx=20)
    r = m.generate("ab", max_tokens=mt, **GREEDY)
    assert r.completion_tokens == 20 - 3 and r.finish_reason == "length"


def test_prompt_exactly_filling_context() -> None:
    m = fresh("abc", n_ctx=4)
    r = m.generate("xyz", **GREEDY)
    assert (r.text, r.completion_tokens, r.finish_reason) == ("", 0, "length")


# ----------------------------------------------------------------------------- prompts

def test_empty_prompt_is_bos() -> None:
    m = fresh("ok")
    r = m.generate("", max_tokens=2, **GREEDY)
    assert r.prompt_tokens == 1 and r.text == "ok"
    assert m.decoder.history[0] == BOS
    r = m.generate([], max_tokens=2, **GREEDY)
    assert r.prompt_tokens == 1


def test_empty_prompt_without_bos_is_an_error() -> None:
    m = fresh("ok", add_bos=False)
    with pytest.raises(ValueError, match="empty prompt"):
        m.generate("")


def test_token_prompt_used_as_given() -> None:
    m = fresh("zz")
    r = m.generate([4 + ord("a"), 4 + ord("b")], max_tokens=2, **GREEDY)
    assert r.prompt_tokens == 2 and m.decoder.history[:2] == [4 + ord("a"), 4 + ord("b")]
    with pytest.raises(ValueError, match="out of range"):
        m.generate([5, N_VOCAB])
    with pytest.raises(ValueError, match="integer"):
        m.generate([5, "a"])


def test_add_bos_override() -> None:
    m = fresh("zz")
    assert m.generate("ab", max_tokens=1, add_bos=False, **GREEDY).prompt_tokens == 2


@pytest.mark.parametrize("kwargs, frag", [
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(min_p=2.0), "min_p"),
    (dict(repeat_penalty=0.0), "repeat_penalty"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(stop=[1]), "stop"),
    (dict(max_tokens="10"), "max_tokens"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(seed=-3), "seed"),
])
def test_bad_arguments_raise_value_error_before_streaming(kwargs, frag) -> None:
    m = fresh("abc")
    with pytest.raises(ValueError, match=frag):
        m.generate("p", stream=True, **kwargs)  # raised at call time, not at first next()
    assert m.decoder.eval_calls == []


def test_unknown_keyword_rejected() -> None:
    with pytest.raises(TypeError):
        fresh("abc").generate("p", max_new_tokenz=3)


# ----------------------------------------------------------------------------- sampling

def test_seed_reproduces_sampled_generation() -> None:
    # noisy logits with a weak peak: sampling is genuinely random
    def mk() -> Model:
        return Model(FakeFile(), _NoisyImpl(), ByteTokenizer(), FakeBackend(), stream_decoder=ByteStreamDecoder)

    kw = dict(max_tokens=20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = mk().generate("p", seed=11, **kw).tokens
    b = mk().generate("p", seed=11, **kw).tokens
    c = mk().generate("p", seed=12, **kw).tokens
    assert a == b and a != c
    # a load-time seed makes the sequence of calls reproducible
    m1 = Model(FakeFile(), _NoisyImpl(), ByteTokenizer(), FakeBackend(), seed=5, stream_decoder=ByteStreamDecoder)
    m2 = Model(FakeFile(), _NoisyImpl(), ByteTokenizer(), FakeBackend(), seed=5, stream_decoder=ByteStreamDecoder)
    assert [m1.generate("p", **kw).tokens for _ in range(2)] == [m2.generate("p", **kw).tokens for _ in range(2)]


class _NoisyImpl(ScriptedImpl):
    def __init__(self) -> None:
        super().__init__(lambda i: 4 + ord("a"), n_ctx=64)

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        self.history.extend(int(t) for t in tokens)
        x = np.full(N_VOCAB, -1e9, np.float32)
        x[4 + ord("a"): 4 + ord("z") + 1] = np.random.default_rng(len(self.history)).normal(0, 1, 26)
        return x


def test_repeat_penalty_reaches_sampler() -> None:
    # the script always prefers "a" by 50; a huge penalty on a seen "a" makes it lose
    m = make(lambda i: 4 + ord("a"))
    r = m.generate("a", max_tokens=1, temperature=0.0, repeat_penalty=1e6)
    assert r.tokens != [4 + ord("a")]
    r = m.generate("a", max_tokens=1, temperature=0.0)
    assert r.tokens == [4 + ord("a")]


# ----------------------------------------------------------------------------- other API

def test_tokenize_detokenize() -> None:
    m = fresh("")
    ids = m.tokenize("hé")
    assert ids == [BOS, 4 + ord("h"), 4 + 0xC3, 4 + 0xA9]
    assert m.tokenize(b"h\xc3\xa9", add_bos=False) == ids[1:]
    assert m.detokenize(ids) == "hé"
    assert m.detokenize(ids, special=True) == "<s>hé"
    with pytest.raises(ValueError):
        m.detokenize([N_VOCAB + 5])


def test_eval_and_reset() -> None:
    m = fresh("abc", n_ctx=8)
    out = m.eval([BOS, 5, 6])
    assert out.shape == (N_VOCAB,) and m.n_past == 3
    assert m.eval([7, 8], logits_all=True).shape == (2, N_VOCAB)
    with pytest.raises(ContextOverflowError, match=r"Requested tokens \(9\) exceed context window of 8"):
        m.eval([1, 2, 3, 4])
    with pytest.raises(ValueError):
        m.eval([])
    m.reset()
    assert m.n_past == 0


def test_later_call_invalidates_a_live_stream() -> None:
    m = fresh("abcdefgh")
    it = m.generate("p", max_tokens=8, stream=True, **GREEDY)
    next(it)
    m.reset()
    with pytest.raises(RuntimeError, match="interrupted"):
        list(it)


def test_properties_and_close() -> None:
    m = fresh("abc")
    assert (m.n_vocab, m.n_ctx, m.backend) == (N_VOCAB, 64, "fake")
    assert m.metadata["llama.context_length"] == 64
    f = m._file
    with m:
        pass
    assert m.closed and f.closed
    with pytest.raises(RuntimeError, match="closed"):
        m.generate("p")
    with pytest.raises(RuntimeError, match="closed"):
        _ = m.metadata
    assert "closed" in repr(m)


# ----------------------------------------------------------------------------- load

def test_exports() -> None:
    from tilellm import llm

    assert llm.load is api.load and llm.Model is Model and llm.GenerationResult is GenerationResult
    assert callable(tilellm.load)


def test_load_missing_file_names_path(tmp_path: Path) -> None:
    p = tmp_path / "nope" / "model.gguf"
    with pytest.raises(FileNotFoundError, match="nope/model.gguf") as ei:
        tilellm.load(p)
    assert isinstance(ei.value, TileLLMError)
    with pytest.raises(IsADirectoryError):
        tilellm.load(tmp_path)


@pytest.mark.parametrize("kw, frag", [
    (dict(n_ctx=-1), "n_ctx"), (dict(n_threads=0), "n_threads"), (dict(n_batch=0), "n_batch"),
    (dict(n_ctx=1.5), "n_ctx"), (dict(seed=-1), "seed"),
])
def test_load_bad_arguments(tmp_path: Path, kw, frag) -> None:
    with pytest.raises(ValueError, match=frag):
        tilellm.load(tmp_path / "x.gguf", **kw)


def test_load_unknown_architecture(tmp_path: Path) -> None:
    p = stub_gguf(tmp_path / "m.gguf", "fancynet", ctx=128, rows=8)
    with pytest.raises(UnsupportedError, match="fancynet") as ei:
        tilellm.load(p, backend="reference")
    assert isinstance(ei.value, TileLLMError)
    assert "llama" in str(ei.value)  # lists what is supported


def test_architecture_registry(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def factory(file, backend, n_ctx, n_batch, numerics):
        seen.update(arch=file.arch, n_ctx=n_ctx, n_batch=n_batch, backend=backend.name)
        return ScriptedImpl(lambda i: EOS, n_ctx)

    from tilellm.llm.models import architectures

    monkeypatch.setitem(architectures.ARCHITECTURES, "toynet", factory)
    assert "toynet" in api.supported_architectures()
    monkeypatch.setattr("tilellm.llm.api.load_tokenizer", lambda md: ByteTokenizer(),
                        raising=False)
    p = stub_gguf(tmp_path / "t.gguf", "toynet", ctx=128, rows=8)
    m = tilellm.load(p, n_ctx=0, n_batch=7, backend="reference")
    assert seen == {"arch": "toynet", "n_ctx": 128, "n_batch": 7, "backend": "reference"}
    assert m.n_batch == 7
    m.close()
    m2 = tilellm.load(p, backend="reference")  # None -> min(context_length, 4096)
    assert seen["n_ctx"] == 128
    m2.close()


def test_register_architecture_validates() -> None:
    with pytest.raises(ValueError):
        api.register_architecture("", lambda *a: None)


def test_default_threads() -> None:
    import os

    from tilellm.backend import default_threads

    n = default_threads()
    assert 1 <= n <= (os.cpu_count() or 1)


# ----------------------------------------------------------------------------- real models

MICRO = DATA / "llama2-micro-f32.gguf"


@pytest.fixture(scope="module")
def micro() -> Model:
    m = tilellm.load(need_data(MICRO), backend="reference", n_ctx=256)
    yield m
    m.close()


def test_real_greedy_matches_transformers(micro: Model) -> None:
    ref = np.load(DATA / "llama2-micro-f32.npz")
    for i in (0, 2):
        prompt = str(ref[f"prompt_p{i}"])
        want = ref[f"hf_gen_ids_p{i}"].tolist()
        assert micro.tokenize(prompt) == ref[f"token_ids_p{i}"].tolist()
        r = micro.generate(prompt, max_tokens=len(want), temperature=0)
        eog = [j for j, t in enumerate(want) if t in micro.eog_ids]
        n = eog[0] if eog else len(want)  # the reference does not stop at EOS; we do
        assert r.tokens == want[:n]
        assert r.prompt_tokens == len(ref[f"token_ids_p{i}"])
        # the text is the continuation as llama.cpp prints it after the prompt
        assert r.text == micro.detokenize(ref[f"token_ids_p{i}"].tolist() + r.tokens)[len(prompt):]


def test_real_stream_equals_plain_and_roundtrip(micro: Model) -> None:
    plain = micro.generate("Once upon a time", max_tokens=20, seed=3)
    chunks = list(micro.generate("Once upon a time", max_tokens=20, seed=3, stream=True))
    assert "".join(c.text for c in chunks) == plain.text
    assert sum((c.tokens for c in chunks), []) == plain.tokens
    text = "Hello world, h\u00e9llo!"
    assert micro.detokenize(micro.tokenize(text)) == text
    assert micro.detokenize(micro.tokenize(text), special=True).startswith("<s>")


def test_real_context_and_defaults() -> None:
    with tilellm.load(need_data(MICRO), backend="reference", n_ctx=16) as m:
        with pytest.raises(ContextOverflowError, match=r"exceed context window of 16"):
            m.generate("word " * 40)
        r = m.generate("Hi", max_tokens=None, temperature=0, ignore_eos=True)
        assert r.finish_reason == "length" and r.prompt_tokens + r.completion_tokens == 16
        assert m.n_batch == 512 and m.backend == "reference"
    with tilellm.load(need_data(MICRO), backend="reference") as m:
        ctx_train = m.metadata["llama.context_length"]
        assert m.n_ctx == min(ctx_train, 4096)
        assert m.n_threads == tilellm.backend.default_threads()
        assert m.n_vocab == 4096 and m.arch == "llama"
        assert m.desc.startswith("llama 3.6M F32")
    with tilellm.load(need_data(MICRO), backend="reference", n_ctx=0) as m:
        assert m.n_ctx == ctx_train


def test_real_prompt_batches(micro: Model) -> None:
    # a prompt longer than n_batch gives the same next-token logits as one batch
    ids = micro.tokenize("The quick brown fox jumps over the lazy dog " * 3)
    with tilellm.load(need_data(MICRO), backend="reference", n_ctx=256, n_batch=7) as small:
        a = small.eval(ids)
    micro.reset()
    b = micro.eval(ids)
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"])
def test_synthetic_gguf_loads_and_runs(tmp_path: Path, wtype: str) -> None:
    import gguf

    mod = synthetic_module()
    p = mod.write_synthetic_gguf(tmp_path / f"s-{wtype}.gguf", hidden=64, ffn=96, heads=4, kv_heads=2,
                                 vocab=300, layers=2, ctx=128, wtype=wtype, seed=0)
    r = gguf.GGUFReader(str(p))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.1.ffn_down.weight"] == wtype.upper() and types["token_embd.weight"] == wtype.upper()
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert len(r.tensors) == 3 + 2 * 9
    with tilellm.load(p, backend="reference") as m:
        assert (m.n_vocab, m.n_ctx, m.arch) == (300, 128, "llama")
        assert m.tokenizer.bos_id == 1 and m.tokenizer.eos_id == 2
        assert m.detokenize(m.tokenize("hello world")) == "hello world"
        logits = m.eval(m.tokenize("hello world"), logits_all=True)
        assert logits.shape == (len(m.tokenize("hello world")), 300)
        assert np.isfinite(logits).all() and 0.2 < logits.std() < 20  # sane scale
        out = m.generate("abc", max_tokens=5, temperature=0, ignore_eos=True)
        assert out.completion_tokens == 5


def test_synthetic_vocab_and_validation(tmp_path: Path) -> None:
    mod = synthetic_module()
    tokens, scores, types = mod.build_vocab(32000)
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types) == 32000
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3] == "<0x00>" and tokens[258] == "<0xFF>"
    assert types[:4] == [2, 3, 3, 6] and types[259] == 1
    with pytest.raises(ValueError, match="vocab"):
        mod.build_vocab(100)
    with pytest.raises(ValueError, match="multiple of 32"):
        mod.write_synthetic_gguf(tmp_path / "x.gguf", hidden=48, ffn=96, heads=4, kv_heads=2, vocab=300,
                                 layers=1, wtype="q4_0")
    with pytest.raises(ValueError, match="heads"):
        mod.write_synthetic_gguf(tmp_path / "x.gguf", hidden=64, ffn=96, heads=4, kv_heads=3, vocab=300, layers=1)
    assert mod.main(["--hidden", "64", "--ffn", "64", "--heads", "2", "--kv-heads", "1", "--vocab", "300",
                     "--layers", "1", "--type", "f16", "-o", str(tmp_path / "cli.gguf")]) == 0
    assert (tmp_path / "cli.gguf").stat().st_size > 0
    assert mod.main(["--hidden", "63", "-o", str(tmp_path / "bad.gguf")]) == 1


def test_synthetic_gguf_loads_in_llama_cpp(tmp_path: Path) -> None:
    """The peer loads our synthetic file, tokenizes like us and computes the same logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    mod = synthetic_module()
    p = mod.write_synthetic_gguf(tmp_path / "peer.gguf", hidden=64, ffn=128, heads=4, kv_heads=2, vocab=600,
                                 layers=2, ctx=128, wtype="f32", seed=2)
    peer = llama_cpp.Llama(str(p), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    with tilellm.load(p, backend="reference", n_ctx=64) as m:
        for text in ("Hello world, this is a test.", "abc  xyz\n123 !?"):
            assert peer.tokenize(text.encode(), add_bos=True) == m.tokenize(text)
        ids = m.tokenize("the quick brown fox")
        peer.eval(ids)
        theirs = np.array(peer.scores[: len(ids)])
        ours = m.eval(ids, logits_all=True)
    np.testing.assert_allclose(ours, theirs, atol=2e-2)  # llama.cpp keeps the KV cache in f16
