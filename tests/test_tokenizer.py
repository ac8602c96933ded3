"""Tokenizer parity with llama.cpp (fixtures ``tests/data/tokenizer-*.json``) and API behaviour."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from _tokdata import DATA, FIXTURES, TOKENIZER_FIXTURES, parity_cases, read_metadata, vocab_metadata

from tilellm.errors import GGUFError, UnsupportedError
from tilellm.llm.text import StreamDecoder, Tokenizer, TokenType, load_tokenizer

SPM = ["llama-spm-4k"]
BPE = ["bpe-llama3-4k", "bpe-qwen2-4k", "bpe-dsv3-4k"]
ALL = SPM + BPE


def _available(name: str) -> bool:
    return (DATA / f"{name}.vocab.json").exists() and (DATA / f"tokenizer-{name}.json").exists()


def _names(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.skipif(not _available(n), reason="no test data")) for n in names]


_TOKS: dict[str, Tokenizer] = {}


def tok_for(name: str) -> Tokenizer:
    if name not in _TOKS:
        _TOKS[name] = load_tokenizer(vocab_metadata(name))
    return _TOKS[name]


def _mismatches(name: str, compute, expected_field: str, fallback: str | None = None):
    bad = []
    cases = parity_cases(name)
    for c in cases:
        exp = c.get(expected_field, c.get(fallback) if fallback else None)
        got = compute(c)
        if got != exp:
            bad.append((c["text"][:60], got if not isinstance(got, list) else got[:12],
                        exp if not isinstance(exp, list) else exp[:12]))
    return bad, len(cases)


def _report(bad, n):
    assert not bad, f"{len(bad)}/{n} mismatches, first: {bad[:3]}"


# --------------------------------------------------------------------------- parity: encode
@pytest.mark.parametrize("name", _names(ALL))
def test_ids_bos_parse_special(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: tok.encode(c["text"], special=True), "ids_bos"))


@pytest.mark.parametrize("name", _names(ALL))
def test_ids_nobos_parse_special(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: tok.encode(c["text"], add_bos=False, special=True), "ids_nobos"))


@pytest.mark.parametrize("name", _names(ALL))
def test_ids_bos_no_parse_special(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: tok.encode(c["text"], special=False),
                         "ids_bos_no_parse_special", "ids_bos"))


@pytest.mark.parametrize("name", _names(ALL))
def test_ids_nobos_no_parse_special(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: tok.encode(c["text"], add_bos=False, special=False),
                         "ids_nobos_no_parse_special", "ids_nobos"))


@pytest.mark.parametrize("name", _names(ALL))
def test_fixture_exercises_special_parsing(name):
    # the no-parse-special variants must actually differ somewhere, or the two tests above prove nothing
    cases = parity_cases(name)
    assert sum("ids_nobos_no_parse_special" in c for c in cases) >= 1


# --------------------------------------------------------------------------- parity: decode
def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


@pytest.mark.parametrize("name", _names(ALL))
def test_detok_nobos(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: _text(tok.detokenize(c["ids_nobos"])), "detok_nobos"))
    _report(*_mismatches(name, lambda c: tok.decode(c["ids_nobos"], skip_special=True), "detok_nobos"))


@pytest.mark.parametrize("name", _names(ALL))
def test_detok_bos_remove_special(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: _text(tok.detokenize(c["ids_bos"], remove_special=True)),
                         "detok_bos_remove_special"))


@pytest.mark.parametrize("name", _names(ALL))
def test_detok_nobos_unparse_special(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: _text(tok.detokenize(c["ids_nobos"], unparse_special=True)),
                         "detok_nobos_unparse_special"))
    _report(*_mismatches(name, lambda c: tok.decode(c["ids_nobos"]), "detok_nobos_unparse_special"))


@pytest.mark.parametrize("name", _names(ALL))
def test_pieces(name):
    tok = tok_for(name)
    _report(*_mismatches(name, lambda c: [tok.token_to_piece(i).hex() for i in c["ids_nobos"]], "pieces_hex"))


# --------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("name", _names(ALL))
@pytest.mark.parametrize("skip_special", [False, True])
def test_stream_decoder_matches_decode(name, skip_special):
    tok = tok_for(name)
    for c in parity_cases(name):
        for ids in (c["ids_nobos"], c["ids_bos"]):
            sd = StreamDecoder(tok, skip_special=skip_special)
            chunks = [sd.feed(i) for i in ids]
            chunks.append(sd.flush())
            whole = tok.decode(ids, skip_special=skip_special)
            assert "".join(chunks) == whole, c["text"][:60]
            if "\ufffd" not in whole:
                assert not any("\ufffd" in ch for ch in chunks), c["text"][:60]


@pytest.mark.parametrize("name", _names(ALL))
def test_stream_decoder_holds_partial_utf8(name):
    tok = tok_for(name)
    text = "a😀b"
    ids = tok.encode(text, add_bos=False)
    pieces = [tok.token_to_piece(i) for i in ids]

    def valid(p: bytes) -> bool:
        try:
            p.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    # the emoji is split into byte tokens in these small vocabularies: the test needs partial pieces
    assert not all(valid(p) for p in pieces)
    sd = StreamDecoder(tok)
    outs = [sd.feed(i) for i in ids] + [sd.flush()]
    for o in outs:
        assert "\ufffd" not in o
    assert "".join(outs).endswith("😀b")
    # each emitted chunk is whole characters: the emoji appears in exactly one chunk
    assert sum("😀" in o for o in outs) == 1


def test_stream_decoder_invalid_bytes_replaced():
    tok = tok_for("llama-spm-4k")
    byte_ids = [i for i in range(tok.n_vocab) if tok.token_type(i) == TokenType.BYTE]
    lone = next(i for i in byte_ids if tok.token_to_piece(i) == b"\xff")
    sd = StreamDecoder(tok)
    out = sd.feed(lone) + sd.feed(tok.encode("x", add_bos=False)[-1]) + sd.flush()
    assert out.startswith("\ufffd") and out.endswith("x")
    # an incomplete sequence at the end is flushed as U+FFFD
    lead = next(i for i in byte_ids if tok.token_to_piece(i) == b"\xe6")
    sd = StreamDecoder(tok)
    assert sd.feed(lead) == ""
    assert sd.flush() == "\ufffd"


def test_stream_decoder_continuation_keeps_space():
    tok = tok_for("llama-spm-4k")
    ids = tok.encode("Hello world", add_bos=False)
    sd = StreamDecoder(tok, continuation=True)
    out = "".join(sd.feed(i) for i in ids) + sd.flush()
    assert out == " Hello world"
    assert tok.decode(ids) == "Hello world"


def test_stream_decoder_clean_spaces_holds_space():
    tok = tok_for("bpe-llama3-4k") if _available("bpe-llama3-4k") else pytest.skip("no data")
    assert tok.clean_spaces
    ids = tok.encode("we 're here , ok", add_bos=False)
    sd = StreamDecoder(tok)
    out = "".join(sd.feed(i) for i in ids) + sd.flush()
    assert out == tok.decode(ids) == "we're here, ok"


def test_stream_decoder_clean_spaces_random():
    # adversarial text for the clean-up passes: spaces, apostrophes, contraction letters, punctuation
    if not _available("bpe-llama3-4k"):
        pytest.skip("no data")
    tok = tok_for("bpe-llama3-4k")
    rng = np.random.default_rng(0)
    alphabet = list(" '  'srvemdl.,?!x\n")
    for _ in range(400):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(1, 40))))
        ids = tok.encode(text, add_bos=False)
        sd = StreamDecoder(tok)
        out = "".join(sd.feed(i) for i in ids) + sd.flush()
        assert out == tok.decode(ids), repr(text)


# --------------------------------------------------------------------------- API details
def test_spm_api_basics():
    tok = tok_for("llama-spm-4k")
    md = vocab_metadata("llama-spm-4k")
    assert tok.n_vocab == len(md["tokenizer.ggml.tokens"]) == 4096
    assert (tok.bos_id, tok.eos_id) == (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"])
    assert tok.add_bos is True and tok.add_space_prefix is True
    assert tok.eos_id in tok.eog_ids and tok.bos_id not in tok.eog_ids
    assert tok.is_control(tok.bos_id) and not tok.is_control(tok.encode("a", add_bos=False)[0])
    ids = tok.encode("Hello")
    assert ids[0] == tok.bos_id and tok.encode("Hello", add_bos=False) == ids[1:]
    assert tok.encode("", add_bos=False) == [] and tok.encode("") == [tok.bos_id]
    assert tok.token_to_piece(tok.bos_id) == b"<s>" and tok.token_to_piece(tok.bos_id, special=False) == b""
    newline = tok.encode("\n", add_bos=False)
    assert tok.token_to_piece(newline[-1]) == b"\n"
    with pytest.raises(ValueError):
        tok.token_to_piece(tok.n_vocab)
    with pytest.raises(ValueError):
        tok.decode([tok.n_vocab + 5])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")  # type: ignore[arg-type]


def test_add_bos_follows_metadata():
    md = dict(vocab_metadata("llama-spm-4k"))
    md["tokenizer.ggml.add_bos_token"] = False
    tok = load_tokenizer(md)
    assert tok.add_bos is False
    assert tok.encode("hi")[0] != tok.bos_id
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id
    del md["tokenizer.ggml.add_bos_token"]
    assert load_tokenizer(md).add_bos is True  # SentencePiece default
    md["tokenizer.ggml.add_eos_token"] = True
    assert load_tokenizer(md).encode("hi")[-1] == tok.eos_id


def test_no_space_prefix():
    md = dict(vocab_metadata("llama-spm-4k"))
    md["tokenizer.ggml.add_space_prefix"] = False
    tok = load_tokenizer(md)
    with_prefix = tok_for("llama-spm-4k")
    a = tok.encode("Hello", add_bos=False)
    b = with_prefix.encode("Hello", add_bos=False)
    assert a != b
    assert tok.token_to_piece(a[0])[:1] != b" " and with_prefix.token_to_piece(b[0])[:1] == b" "
    assert tok.decode(a) == "Hello"


def test_special_parsing_spm():
    tok = tok_for("llama-spm-4k")
    assert tok.encode("a</s>b", add_bos=False, special=True).count(tok.eos_id) == 1
    assert tok.eos_id not in tok.encode("a</s>b", add_bos=False, special=False)


def test_eog_detected_by_text():
    md = dict(vocab_metadata("llama-spm-4k"))
    toks = list(md["tokenizer.ggml.tokens"])
    types = np.array(md["tokenizer.ggml.token_type"]).copy()
    victim = 4000
    toks[victim] = "<|im_end|>"
    types[victim] = TokenType.USER_DEFINED
    md["tokenizer.ggml.tokens"] = toks
    md["tokenizer.ggml.token_type"] = types
    tok = load_tokenizer(md)
    assert victim in tok.eog_ids and tok.eos_id in tok.eog_ids
    assert tok.is_control(victim)  # llama.cpp overrides such tokens to CONTROL
    assert tok.eot_id == victim


def test_errors():
    md = dict(vocab_metadata("llama-spm-4k"))
    with pytest.raises(UnsupportedError, match="bert"):
        load_tokenizer({**md, "tokenizer.ggml.model": "bert"})
    with pytest.raises(GGUFError):
        load_tokenizer({k: v for k, v in md.items() if k != "tokenizer.ggml.model"})
    with pytest.raises(GGUFError):
        load_tokenizer({k: v for k, v in md.items() if k != "tokenizer.ggml.tokens"})
    with pytest.raises(GGUFError):
        load_tokenizer({**md, "tokenizer.ggml.scores": md["tokenizer.ggml.scores"][:-1]})
    with pytest.raises(GGUFError):
        load_tokenizer({**md, "tokenizer.ggml.token_type": md["tokenizer.ggml.token_type"][:10]})
    with pytest.raises(GGUFError):
        load_tokenizer({**md, "tokenizer.ggml.add_bos_token": "yes"})
    # an out-of-range special id falls back to the default like llama.cpp, never an IndexError
    tok = load_tokenizer({**md, "tokenizer.ggml.eos_token_id": 10**6})
    assert tok.eos_id == 2


def test_duplicate_and_empty_tokens_spm():
    md = dict(vocab_metadata("llama-spm-4k"))
    toks = list(md["tokenizer.ggml.tokens"])
    hello = tok_for("llama-spm-4k").encode("Hello", add_bos=False)
    dup_of = hello[0]
    toks[4001] = toks[dup_of]  # duplicate text: llama.cpp maps it to the last id
    toks[4002] = ""
    tok = load_tokenizer({**md, "tokenizer.ggml.tokens": toks})
    ids = tok.encode("Hello", add_bos=False)
    assert ids[0] == 4001
    assert tok.decode(ids) == "Hello"


# --------------------------------------------------------------------------- speed
def _long_text(n_chars: int) -> str:
    corpus = "".join(c["text"] for c in parity_cases("llama-spm-4k") if c["source"] == "corpus")
    return (corpus * (n_chars // max(1, len(corpus)) + 1))[:n_chars]


@pytest.mark.parametrize("name", _names(ALL))
def test_speed_10k_tokens(name):
    tok = tok_for(name)
    text = _long_text(60000)
    ids = tok.encode(text, add_bos=False)
    # trim to ~10k tokens worth of text
    text = text[: int(len(text) * 10000 / len(ids))]
    tok2 = load_tokenizer(vocab_metadata(name))  # fresh: no warm caches
    t0 = time.process_time()  # CPU time: load from other processes must not count
    ids = tok2.encode(text, special=True)
    dt = time.process_time() - t0
    assert len(ids) >= 9000
    assert dt < 0.5, f"{len(ids)} tokens in {dt:.3f} s"
    t0 = time.process_time()
    assert tok2.decode(ids[1:], skip_special=True) == text or name != "llama-spm-4k"
    assert time.process_time() - t0 < 0.5


# --------------------------------------------------------------------------- from the GGUF itself
def _gguf_path(g: str) -> Path:
    local = DATA / g
    return local if local.exists() else FIXTURES / g  # the shared fixture folder, when available


_GGUFS = [(n, _gguf_path(g)) for n, g in TOKENIZER_FIXTURES.items()]


@pytest.mark.parametrize("name,path", [
    pytest.param(n, p, marks=pytest.mark.skipif(not (p.exists() and _available(n)), reason="GGUF not available"))
    for n, p in _GGUFS])
def test_gguf_metadata_matches_extracted(name, path: Path):
    md = read_metadata(path)
    tok = load_tokenizer(md)
    ref = tok_for(name)
    assert tok.tokens == ref.tokens
    npz = path.with_suffix(".npz")
    if npz.exists():
        r = np.load(npz)
        for i in range(4):
            assert tok.encode(str(r[f"prompt_p{i}"])) == r[f"token_ids_p{i}"].tolist()


# --------------------------------------------------------------------------- byte-level BPE details
def _bpe(name: str = "bpe-llama3-4k", **overrides):
    if not _available(name):
        pytest.skip("no BPE test data")
    md = dict(vocab_metadata(name))
    md.update(overrides)
    return load_tokenizer(md)


def test_bpe_unknown_pretokenizer_is_named():
    with pytest.raises(UnsupportedError, match="my-new-pre"):
        _bpe(**{"tokenizer.ggml.pre": "my-new-pre"})


def test_bpe_missing_or_bad_merges():
    md = dict(vocab_metadata("bpe-llama3-4k")) if _available("bpe-llama3-4k") else pytest.skip("no data")
    with pytest.raises(GGUFError, match="merges"):
        load_tokenizer({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(GGUFError, match="merge"):
        load_tokenizer({**md, "tokenizer.ggml.merges": ["ab"]})


def test_bpe_llama3_specials_and_eog():
    tok = _bpe()
    ids = {t: tok.token_to_id[t] for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>",
                                             "<|start_header_id|>")}
    assert tok.bos_id == ids["<|begin_of_text|>"] and tok.eos_id == ids["<|end_of_text|>"]
    assert tok.eog_ids == {ids["<|end_of_text|>"], ids["<|eot_id|>"], ids["<|eom_id|>"]}
    assert tok.eot_id == ids["<|eot_id|>"] and tok.eom_id == ids["<|eom_id|>"]
    assert tok.add_bos and tok.ignore_merges and tok.clean_spaces and not tok.add_space_prefix
    text = "<|start_header_id|>user<|end_header_id|>"
    assert tok.encode(text, add_bos=False, special=True)[0] == ids["<|start_header_id|>"]
    assert ids["<|start_header_id|>"] not in tok.encode(text, add_bos=False, special=False)
    # control tokens are hidden unless asked for
    assert tok.decode([ids["<|eot_id|>"]], skip_special=True) == ""
    assert tok.decode([ids["<|eot_id|>"]]) == "<|eot_id|>"


def test_bpe_default_add_bos_per_pretokenizer():
    md = dict(vocab_metadata("bpe-dsv3-4k")) if _available("bpe-dsv3-4k") else pytest.skip("no data")
    del md["tokenizer.ggml.add_bos_token"]
    assert load_tokenizer(md).add_bos is False  # llama.cpp: BPE adds BOS only for llama3-style
    md3 = dict(vocab_metadata("bpe-llama3-4k"))
    del md3["tokenizer.ggml.add_bos_token"]
    assert load_tokenizer(md3).add_bos is True


def test_bpe_user_defined_always_split():
    tok = _bpe("bpe-qwen2-4k")
    think = tok.token_to_id["<think>"]
    assert tok.token_type(think) == TokenType.USER_DEFINED
    for special in (False, True):  # llama.cpp splits USER_DEFINED tokens even without parse_special
        assert tok.encode("a<think>b", add_bos=False, special=special).count(think) == 1
    assert tok.decode([think], skip_special=True) == "<think>"  # user-defined tokens are always shown
    pad = tok.token_to_id["[PAD4150]"]
    assert tok.token_type(pad) == TokenType.UNUSED and tok.token_to_piece(pad) == b""


def test_bpe_byte_alphabet_roundtrip():
    from tilellm.llm.text.bpe import bytes_to_unicode
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a" and table[ord("A")] == "A"
    tok = _bpe()
    for text in ["\x00\x01\x7f\xa0\xad é 日本 😀", "tabs\t\r\n", "".join(map(chr, range(1, 300)))]:
        assert tok.decode(tok.encode(text, add_bos=False)) == text or tok.clean_spaces


def test_bpe_merge_long_equals_merge():
    tok = _bpe()
    rng = np.random.default_rng(1)
    alphabet = list("ab ĠtheinĊer") + ["Ġt", "in"]
    for _ in range(300):
        syms = [str(x) for x in rng.choice(alphabet, size=int(rng.integers(1, 120)))]
        word = "".join(syms)
        assert tok._merge(list(word)) == tok._merge_long(list(word)), word
    long_word = "a" * 5000 + "b" * 5000  # pathological single pre-token: must stay fast
    t0 = time.perf_counter()
    tok.encode(long_word, add_bos=False)
    assert time.perf_counter() - t0 < 1.0


def _pre(pre: str) -> Tokenizer:
    return _bpe("bpe-llama3-4k", **{"tokenizer.ggml.pre": pre})


def test_pretokenizer_llama3_vs_qwen2_digits():
    assert _pre("llama-bpe").pretokenize("x 1234567") == ["x", " ", "123", "456", "7"]
    assert _pre("qwen2").pretokenize("x 1234") == ["x", " ", "1", "2", "3", "4"]
    assert _pre("llama3").pretokenize("I'VE it's") == ["I", "'VE", " it", "'s"]
    assert _pre("llama-bpe").pretokenize("a  \n\n b") == ["a", "  \n\n", " b"]
    assert _pre("llama-bpe").pretokenize("hi   there") == ["hi", "  ", " there"]


def test_pretokenizer_deepseek_v3():
    tok = _pre("deepseek-v3")
    assert tok.pretokenize("abc 12345") == ["abc", " ", "123", "45"]
    assert tok.pretokenize("日本語のテキスト") == ["日本語のテキスト"]  # CJK ideographs + kana in one run
    assert tok.pretokenize(".foo bar!?\n") == [".foo", " bar", "!?\n"]
    assert tok.pretokenize("café") == ["café"]  # letters with combining marks stay together


def test_pretokenizer_deepseek_llm_and_coder():
    llm = _pre("deepseek-llm")
    assert llm.pretokenize("a\r\nb") == ["a", "\r", "\n", "b"]
    assert llm.pretokenize("Hello world 123") == ["Hello", " world", " ", "123"]
    assert llm.pretokenize("中文한국어") == ["中文한국어"]
    coder = _pre("deepseek-coder")
    # "=" is a symbol (\p{S}), not punctuation, so " = " stays an unmatched gap; digits split singly
    assert coder.pretokenize("x = 42;") == ["x", " = ", "4", "2", ";"]
    assert coder.pretokenize("f(a, b)") == ["f", "(", "a", ",", " b", ")"]
    assert coder.pretokenize("a\nb") == ["a", "\n", "b"]


def test_pretokenizer_gpt2_and_default():
    gpt2 = _pre("gpt-2")
    assert gpt2.pretokenize("Hello world's 12345!!") == ["Hello", " world", "'s", " 12345", "!!"]
    assert gpt2.pretokenize("a   b") == ["a", "  ", " b"]
    default = _pre("default")
    # llama.cpp's "default": punctuation runs are split off first, then GPT-2, then digits by three
    assert default.pretokenize("x, 1234567") == ["x", ",", " ", "123", "456", "7"]
    for t in (gpt2, default):
        assert t.clean_spaces and not t.ignore_merges


def test_pretokenizers_cover_the_text():
    from tilellm.llm.text.bpe import PRETOKENIZERS
    text = "Hello, wörld! 12345 日本語 한국어 ＡＢＣ\r\n\t  x's 😀👍🏽 e\u0301 ٣٤٥"
    for name in PRETOKENIZERS:
        pieces = _pre(name).pretokenize(text)
        assert "".join(pieces) == text and all(pieces), name
