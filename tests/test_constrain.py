"""Structured output (llm/text/constrain.py): JSON mode, JSON schema and GBNF grammars make even a random-weight
model's output parse."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import fixture_path

from tilellm import load
from tilellm.llm.text.constrain import Constraint, ConstraintError, generate_constrained, grammar_source

jsonschema = pytest.importorskip("jsonschema")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}

# yes/no answers and small sums: a finite language, so every sample ends inside the budget
GBNF = r'''
root   ::= answer | sum
answer ::= ("yes" | "no") "."
sum    ::= digit " + " digit " = " digit digit?
digit  ::= [0-9]
'''
GBNF_RE = re.compile(r"(yes|no)\.|[0-9] \+ [0-9] = [0-9][0-9]?")


@pytest.fixture(scope="module", params=["llama2-micro-q8_0.gguf", "qwen2-micro-q8_0.gguf"])
def model(request):
    with load(fixture_path(request.param), n_ctx=256, seed=0) as m:
        yield m


def test_json_schema_outputs_validate_in_50_of_50_seeded_samples_at_temperature_1(model) -> None:
    c = Constraint(model.tokenizer, json_schema=PERSON, n_vocab=model.n_vocab)
    prompt = model.tokenize("Describe a person as JSON:")
    for seed in range(50):
        text, ids, finish = generate_constrained(model, prompt, c, max_tokens=120, temperature=1.0, top_k=0,
                                                 top_p=1.0, min_p=0.0, seed=seed)
        assert finish == "stop", (seed, text)
        obj = json.loads(text)
        jsonschema.validate(obj, PERSON)
        assert ids and c.done


def test_response_format_json_schema_and_json_object(model) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    c = Constraint(model.tokenizer, response_format=fmt, n_vocab=model.n_vocab)
    text, _, finish = generate_constrained(model, "Hi", c, max_tokens=120, temperature=1.0, seed=3)
    jsonschema.validate(json.loads(text), PERSON)
    # llama-cpp-python's json_object with a schema narrows it the same way
    c2 = Constraint(model.tokenizer, response_format={"type": "json_object", "schema": PERSON},
                    n_vocab=model.n_vocab)
    jsonschema.validate(json.loads(generate_constrained(model, "Hi", c2, max_tokens=120, seed=4)[0]), PERSON)
    # plain JSON mode: a greedy random model must still produce an object (the mask allows nothing else)
    c3 = Constraint(model.tokenizer, response_format={"type": "json_object"}, n_vocab=model.n_vocab)
    text, ids, finish = generate_constrained(model, "Hi", c3, max_tokens=60, temperature=0.0)
    assert text.startswith("{")
    if finish == "stop":
        assert isinstance(json.loads(text), dict)


def test_gbnf_grammar_outputs_match_the_grammar(model) -> None:
    c = Constraint(model.tokenizer, grammar=GBNF, n_vocab=model.n_vocab)
    seen = set()
    for seed in range(20):
        text, _, finish = generate_constrained(model, "Q:", c, max_tokens=40, temperature=1.0, top_k=0, top_p=1.0,
                                               min_p=0.0, seed=seed)
        assert finish == "stop"
        assert GBNF_RE.fullmatch(text), (seed, text)
        seen.add(text[:1].isdigit())
    assert seen == {True, False}  # both alternatives are reachable: the mask is not over-restrictive


def test_logits_processor_interface_masks_and_follows_the_tokens(model) -> None:
    c = Constraint(model.tokenizer, grammar='root ::= "yes" | "no"', n_vocab=model.n_vocab)
    prompt = model.tokenize("Q:")
    logits = np.zeros(model.n_vocab, dtype=np.float32)
    masked = c(np.array(prompt), logits)
    allowed = np.flatnonzero(np.isfinite(masked))
    assert 0 < allowed.size < 50
    texts = {model.tokenizer.token_to_piece(int(i)) for i in allowed}
    assert all(b"yes".startswith(t.lstrip(b" ")) or b"no".startswith(t.lstrip(b" ")) for t in texts), texts
    # feed "no" through the processor, each time the longest allowed token that continues it: then only an
    # end-of-generation token is allowed
    ids, rest = list(prompt), b"no"
    while rest:
        ok = np.flatnonzero(np.isfinite(c(np.array(ids), logits)))
        fits = [int(i) for i in ok if rest.startswith(model.tokenizer.token_to_piece(int(i)) or b"\0")]
        t = max(fits, key=lambda i: len(model.tokenizer.token_to_piece(i)))
        ids.append(t)
        rest = rest[len(model.tokenizer.token_to_piece(t)):]
    final = np.flatnonzero(np.isfinite(c(np.array(ids), logits)))
    assert c.done and set(final.tolist()) <= set(model.eog_ids)


def test_bad_inputs_are_one_line_errors(model) -> None:
    tok = model.tokenizer
    with pytest.raises(ConstraintError, match="bad grammar"):
        Constraint(tok, grammar="root ::= (")
    with pytest.raises(ConstraintError, match="not valid JSON"):
        Constraint(tok, json_schema="{nope")
    with pytest.raises(ConstraintError, match="only one"):
        Constraint(tok, grammar='root ::= "a"', json_schema={})
    with pytest.raises(ConstraintError, match="unknown response_format"):
        Constraint(tok, response_format={"type": "xml"})
    with pytest.raises(ConstraintError, match="nothing to constrain"):
        Constraint(tok, response_format={"type": "text"})
    assert grammar_source(response_format={"type": "text"}) is None
    c = Constraint(tok, grammar='root ::= "a"', n_vocab=model.n_vocab)
    with pytest.raises(ValueError, match="entries"):
        c.apply(np.zeros(model.n_vocab - 1, np.float32))
    padded = c.apply(np.zeros(model.n_vocab + 3, np.float32))  # rows past the vocabulary are never allowed
    assert padded.shape == (model.n_vocab + 3,) and np.all(np.isneginf(padded[model.n_vocab:]))
    assert np.isfinite(padded).sum() >= 1


def test_tokenizer_description_is_cached_per_tokenizer_and_released_with_it(model) -> None:
    import gc

    from tilellm.llm.text import constrain

    a = constrain.build_lltokenizer(model.tokenizer, model.n_vocab)
    assert constrain.build_lltokenizer(model.tokenizer, model.n_vocab) is a
    assert a.vocab_size == model.n_vocab and set(a.eos_tokens) >= {model.tokenizer.eos_id}
    with load(fixture_path("llama2-micro-f32.gguf"), n_ctx=64) as other:
        constrain.build_lltokenizer(other.tokenizer)
        n = len(constrain._LLTOK_CACHE)
        del other
    gc.collect()
    assert len(constrain._LLTOK_CACHE) == n - 1  # the closed model's description went with its tokenizer


def test_llama_grammar_and_response_format_go_through_logits_processor() -> None:
    from tilellm import Llama
    from tilellm.llm.text.constrain import logits_processor

    llm = Llama(model_path=str(fixture_path("qwen2-micro-q8_0.gguf")), n_ctx=128, verbose=False, seed=1)
    for seed in range(5):
        out = llm.create_completion("Q:", grammar=GBNF, max_tokens=40, temperature=1.0, seed=seed)
        assert GBNF_RE.fullmatch(out["choices"][0]["text"]), out
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "x"}], max_tokens=120, temperature=1.0,
                                     response_format={"type": "json_schema", "json_schema": {"schema": PERSON}})
    jsonschema.validate(json.loads(out["choices"][0]["message"]["content"]), PERSON)
    assert logits_processor(llm.model.tokenizer, response_format={"type": "text"}) is None

    class LlamaGrammarLike:  # llama-cpp-python's LlamaGrammar keeps its GBNF source in _grammar
        _grammar = 'root ::= "ok"'

    c = logits_processor(llm.model.tokenizer, grammar=LlamaGrammarLike())
    assert isinstance(c, Constraint)
