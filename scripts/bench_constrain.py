"""Per-token cost of a structured-output mask on the embedded Gemma 3 270M (262,144 tokens) against its decode time.

    python scripts/bench_constrain.py [-n TOKENS] [-t THREADS]

Prints the one-time tokenizer build, the grammar compile, the mean mask time per generated token (llguidance's
bitmask + applying it to the logits), and the model's decode time per token without and with the constraint.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"]}},
    "required": ["name", "age", "tags", "address"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("-t", type=int, default=None)
    a = ap.parse_args()
    from tilellm import load
    from tilellm.llm.cli.default_model import default_model_path
    from tilellm.llm.text import constrain
    from tilellm.llm.text.sampling import Sampler

    m = load(default_model_path(), n_ctx=512, n_threads=a.t, seed=0)
    t0 = time.perf_counter()
    constrain.build_lltokenizer(m.tokenizer, m.n_vocab)
    t1 = time.perf_counter()
    c = constrain.Constraint(m.tokenizer, json_schema=SCHEMA, n_vocab=m.n_vocab)
    t2 = time.perf_counter()
    print(f"vocabulary {m.n_vocab}, backend {m.backend}, threads {m.n_threads}")
    print(f"tokenizer build {1e3 * (t1 - t0):.0f} ms (once per model), grammar compile {1e3 * (t2 - t1):.1f} ms")
    prompt = m.chat_prompt([{"role": "user", "content": "Give a person as JSON with name, age, tags, address."}])

    # plain decode: n tokens, one eval each
    m.reset()
    logits = m.eval(prompt)
    s = Sampler(0.0)
    tok = s.sample(logits)
    t0 = time.perf_counter()
    for _ in range(a.n):
        logits = m.eval([tok])
        tok = s.sample(logits)
    plain = (time.perf_counter() - t0) / a.n

    # constrained decode, timing the mask separately
    mask_s, n = 0.0, 0
    c.reset()
    m.reset()
    logits = m.eval(prompt)
    hist = list(prompt)
    t0 = time.perf_counter()
    while n < a.n:
        tm = time.perf_counter()
        masked = c(hist, logits)
        mask_s += time.perf_counter() - tm
        tok = s.sample(masked, hist)
        if tok in m.eog_ids:
            break
        hist.append(tok)
        n += 1
        c.sync(hist)
        if c.done:
            break
        logits = m.eval([tok])
    total = (time.perf_counter() - t0) / max(n, 1)
    text = m.detokenize(hist[len(prompt):])
    print(f"decode {1e3 * plain:.2f} ms/token plain; constrained {1e3 * total:.2f} ms/token over {n} tokens, "
          f"of which mask {1e3 * mask_s / max(n, 1):.3f} ms/token ({100 * mask_s / max(n, 1) / plain:.1f} % of a "
          f"plain decode step)")
    print("output:", text[:200])
    try:
        json.loads(text)
        print("parses: yes")
    except ValueError:
        print("parses: no (budget reached)" if n >= a.n else "parses: NO")
    _ = np  # numpy is used through the constraint


if __name__ == "__main__":
    main()
