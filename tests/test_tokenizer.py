"""Tokenizer parity with llama.cpp (fixtures ``tests/data/tokenizer-*.json``) and API behaviour."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from _tokdata import DATA, TOKENIZER_FIXTURES, parity_cases, read_metadata, vocab_metadata
from tilellm.errors import GGUFError, UnsupportedError
from tilellm.llm.tokenizer import StreamDecoder, Tokenizer, TokenType

SPM = ["llama-spm-4k"]
BPE = ["bpe-llama3-4k", "bpe-qwen2-4k", "bpe-dsv3-4k"]
ALL = SPM + BPE


def _available(name: str) -> bool:
    if name in BPE and importlib.util.find_spec("tilellm.llm.tokenizer_bpe") is None:
        return False
    return (DATA / f"{name}.vocab.json").exists() and (DATA / f"tokenizer-{name}.json").exists()


def _names(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.skipif(not _available(n), reason="no test data")) for n in names]


_TOKS: dict[str, Tokenizer] = {}


def tok_for(name: str) -> Tokenizer:
    if name not in _TOKS:
        _TOKS[name] = Tokenizer.from_metadata(vocab_metadata(name))
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
    assert sum("ids_nobos_no_parse_special" in c for c in cases) >= 2


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
    tok = Tokenizer.from_metadata(md)
    assert tok.add_bos is False
    assert tok.encode("hi")[0] != tok.bos_id
    assert tok.encode("hi", add_bos=True)[0] == tok.bos_id
    del md["tokenizer.ggml.add_bos_token"]
    assert Tokenizer.from_metadata(md).add_bos is True  # SentencePiece default
    md["tokenizer.ggml.add_eos_token"] = True
    assert Tokenizer.from_metadata(md).encode("hi")[-1] == tok.eos_id


def test_no_space_prefix():
    md = dict(vocab_metadata("llama-spm-4k"))
    md["tokenizer.ggml.add_space_prefix"] = False
    tok = Tokenizer.from_metadata(md)
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
    tok = Tokenizer.from_metadata(md)
    assert victim in tok.eog_ids and tok.eos_id in tok.eog_ids
    assert tok.is_control(victim)  # llama.cpp overrides such tokens to CONTROL
    assert tok.eot_id == victim


def test_errors():
    md = dict(vocab_metadata("llama-spm-4k"))
    with pytest.raises(UnsupportedError, match="bert"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.model": "bert"})
    with pytest.raises(GGUFError):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.model"})
    with pytest.raises(GGUFError):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.tokens"})
    with pytest.raises(GGUFError):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.scores": md["tokenizer.ggml.scores"][:-1]})
    with pytest.raises(GGUFError):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.token_type": md["tokenizer.ggml.token_type"][:10]})
    with pytest.raises(GGUFError):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.add_bos_token": "yes"})
    # an out-of-range special id falls back to the default like llama.cpp, never an IndexError
    tok = Tokenizer.from_metadata({**md, "tokenizer.ggml.eos_token_id": 10**6})
    assert tok.eos_id == 2


def test_duplicate_and_empty_tokens_spm():
    md = dict(vocab_metadata("llama-spm-4k"))
    toks = list(md["tokenizer.ggml.tokens"])
    hello = tok_for("llama-spm-4k").encode("Hello", add_bos=False)
    dup_of = hello[0]
    toks[4001] = toks[dup_of]  # duplicate text: llama.cpp maps it to the last id
    toks[4002] = ""
    tok = Tokenizer.from_metadata({**md, "tokenizer.ggml.tokens": toks})
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
    tok2 = Tokenizer.from_metadata(vocab_metadata(name))  # fresh: no warm caches
    t0 = time.perf_counter()
    ids = tok2.encode(text, special=True)
    dt = time.perf_counter() - t0
    assert len(ids) >= 9000
    assert dt < 0.5, f"{len(ids)} tokens in {dt:.3f} s"
    t0 = time.perf_counter()
    assert tok2.decode(ids[1:], skip_special=True) == text or name != "llama-spm-4k"
    assert time.perf_counter() - t0 < 0.5


# --------------------------------------------------------------------------- from the GGUF itself
_GGUFS = [(n, DATA / g) for n, g in TOKENIZER_FIXTURES.items()]


@pytest.mark.parametrize("name,path", [pytest.param(n, p, marks=pytest.mark.skipif(not (p.exists() and _available(n)), reason="GGUF not in tests/data"))
                                       for n, p in _GGUFS])
def test_gguf_metadata_matches_extracted(name, path: Path):
    md = read_metadata(path)
    tok = Tokenizer.from_metadata(md)
    ref = tok_for(name)
    assert tok.tokens == ref.tokens
    npz = path.with_suffix(".npz")
    if npz.exists():
        r = np.load(npz)
        for i in range(4):
            assert tok.encode(str(r[f"prompt_p{i}"])) == r[f"token_ids_p{i}"].tolist()
