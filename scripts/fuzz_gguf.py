#!/usr/bin/env python3
"""Fuzz `open_gguf` with mutated copies of the fixture GGUFs.

Every case is derived deterministically from (seed, index): pick a template GGUF, apply 1-4 mutations
aimed at the structure (bit flips in the header / metadata / tensor-info regions, truncations, u64
length/count/offset fields and u32 type fields set to extremes, random metadata values, inserted or
deleted bytes, swapped names and offsets), write the file, open it. Allowed outcomes: the file loads
(then every view must lie inside the data section, not overlap, and be readable) or a documented
`tilellm.errors.TileLLMError` is raised. Anything else is a failure: another exception type, a crash
of the interpreter, or a hang.

    python scripts/fuzz_gguf.py -n 10000               # subprocess batches, prints a summary line
    python scripts/fuzz_gguf.py --case 1:1234 --out x.gguf   # rebuild one case to debug it

`--diff` also checks loaded cases against gguf-py's reader (slow: ~0.1 s a case); `--deep` goes on
to `tilellm.load` + one eval of the loaded cases.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = [ROOT / "tests" / "data", Path("/work/shared/fixtures")]
MAX_TEMPLATE_BYTES = 8_000_000  # bigger files only slow each case down, they add no new structure

U64_EXTREMES = [0, 1, 2**16, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
U32_EXTREMES = [0, 1, 2, 4, 5, 9, 12, 13, 16, 31, 39, 255, 2**16, 2**31, 2**32 - 1]


@dataclass
class Template:
    """A fixture GGUF and the positions of its fields, as traced by our own parser."""

    name: str
    data: bytes
    fields: list[tuple[int, int, str]]
    kv_end: int
    infos_end: int
    data_start: int
    by_label: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in self.fields:
            self.by_label.setdefault(f[2], []).append(f)


def find_templates(dirs: list[Path] | None = None, max_bytes: int = MAX_TEMPLATE_BYTES) -> list[Path]:
    """Fixture GGUFs (deduplicated by file name, sorted) no larger than `max_bytes`."""
    found: dict[str, Path] = {}
    for d in dirs or DEFAULT_DIRS:
        for p in sorted(Path(d).glob("*.gguf")):
            if p.stat().st_size <= max_bytes:
                found.setdefault(p.name, p)
    return [found[k] for k in sorted(found)]


def load_templates(paths: list[Path]) -> list[Template]:
    from tilellm.llm.gguf.reader import describe_layout

    out = []
    for p in paths:
        parsed, fields = describe_layout(p)
        out.append(Template(p.name, p.read_bytes(), fields, parsed.kv_end, parsed.infos_end, parsed.data_start))
    return out


# -- mutations ----------------------------------------------------------------------------------
# Each takes (rng, template, buf) and edits the bytearray `buf` in place (or returns a new one);
# it returns a short description so a failing case can be understood from the report.

def _region(rng: random.Random, t: Template, buf: bytearray) -> tuple[int, int, str]:
    """A structural region, clipped to the current buffer (an earlier splice may have shortened it)."""
    name = rng.choices(["header", "kv", "infos"], weights=[1, 3, 3])[0]
    lo, hi = {"header": (0, 24), "kv": (24, t.kv_end), "infos": (t.kv_end, t.infos_end)}[name]
    hi = min(max(hi, lo + 1), len(buf))
    lo = min(lo, hi - 1)
    return lo, hi, name


def m_bitflip(rng: random.Random, t: Template, buf: bytearray) -> str:
    lo, hi, name = _region(rng, t, buf)
    k = rng.choice([1, 1, 1, 2, 3, 8])
    for _ in range(k):
        i = rng.randrange(lo, hi)
        buf[i] ^= 1 << rng.randrange(8)
    return f"bitflip x{k} in {name}"


def m_bytes(rng: random.Random, t: Template, buf: bytearray) -> str:
    lo, hi, name = _region(rng, t, buf)
    i = rng.randrange(lo, hi)
    n = rng.choice([1, 2, 4, 8, 16])
    fill = rng.choice(["zero", "ff", "random"])
    for j in range(i, min(i + n, len(buf))):
        buf[j] = 0 if fill == "zero" else 0xFF if fill == "ff" else rng.randrange(256)
    return f"{n} {fill} bytes at {i} ({name})"


def m_truncate(rng: random.Random, t: Template, buf: bytearray) -> bytearray | str:
    if rng.random() < 0.7:
        cut = rng.randrange(0, min(len(buf), t.data_start + 64))
    else:
        cut = rng.randrange(0, len(buf))
    del buf[cut:]
    return f"truncate at {cut}"


def _pick_field(rng: random.Random, t: Template, labels: list[str]) -> tuple[int, int, str] | None:
    cands = [lab for lab in labels if lab in t.by_label]
    if not cands:
        return None
    return rng.choice(t.by_label[rng.choice(cands)])


def _set_int_field(rng: random.Random, t: Template, buf: bytearray, fmt: str, fields: list[str],
                   new_value: Callable[[int], int]) -> str:
    """Overwrite one integer field of the given kinds (struct format `fmt`) with new_value(old)."""
    size = struct.calcsize(fmt)
    f = _pick_field(rng, t, fields)
    if f is None:
        return f"no {8 * size}-bit field"
    pos = f[0]
    if pos + size > len(buf):
        return f"{8 * size}-bit field gone"
    old = struct.unpack_from(fmt, buf, pos)[0]
    v = new_value(old)
    struct.pack_into(fmt, buf, pos, v)
    return f"{f[2]}@{pos} {old} -> {v}"


def m_u64(rng: random.Random, t: Template, buf: bytearray) -> str:
    def new(old: int) -> int:
        near = rng.random() >= 0.6
        v = max(0, old + rng.choice([-64, -32, -1, 1, 32, 64, 4096])) if near else rng.choice(U64_EXTREMES)
        return min(v, 2**64 - 1)
    return _set_int_field(rng, t, buf, "<Q", ["header.n_tensors", "header.n_kv", "kv.key.len", "val.str.len",
                                                "arr.count", "ti.name.len", "ti.ne", "ti.offset", "val.u64", "val.i64"],
                          new)


def m_u32(rng: random.Random, t: Template, buf: bytearray) -> str:
    return _set_int_field(rng, t, buf, "<I", ["header.version", "kv.type", "arr.type", "ti.n_dims", "ti.type",
                                                "val.u32", "val.i32"],
                          lambda old: rng.choice(U32_EXTREMES) if rng.random() < 0.6 else rng.randrange(0, 40))


def m_value(rng: random.Random, t: Template, buf: bytearray) -> str:
    """Random metadata value bytes: scalars, string bytes (often invalid UTF-8), numeric arrays, vocab strings."""
    labels = [lab for lab in t.by_label
              if lab.startswith(("val.", "arr.")) and not lab.endswith((".len", ".count", ".type"))]
    if not labels:
        return "no value"
    pos, n, lab = rng.choice(t.by_label[rng.choice(labels)])
    n = min(n, len(buf) - pos)
    if n <= 0:
        return f"empty {lab}"
    k = min(n, rng.choice([1, 1, 2, 4, 8]))
    i = pos + rng.randrange(0, n - k + 1)
    for j in range(i, i + k):
        buf[j] = rng.choice([0x00, 0x01, 0x02, 0x7F, 0x80, 0xC3, 0xED, 0xFF, rng.randrange(256)])
    return f"value {lab}@{i} x{k}"


def m_splice(rng: random.Random, t: Template, buf: bytearray) -> bytearray | str:
    lo, hi, name = _region(rng, t, buf)
    i = rng.randrange(lo, hi)
    n = rng.choice([1, 2, 3, 4, 7, 8, 16])
    if rng.random() < 0.5:
        del buf[i:i + n]
        return f"delete {n} at {i} ({name})"
    buf[i:i] = bytes(rng.randrange(256) for _ in range(n))
    return f"insert {n} at {i} ({name})"


def m_names_offsets(rng: random.Random, t: Template, buf: bytearray) -> str:
    """Copy one tensor's name or offset onto another: duplicates and overlaps."""
    if rng.random() < 0.5:
        offs = t.by_label.get("ti.offset", [])
        if len(offs) < 2:
            return "no offsets"
        a, b = rng.sample(offs, 2)
        if max(a[0], b[0]) + 8 > len(buf):
            return "offsets gone"
        buf[b[0]:b[0] + 8] = buf[a[0]:a[0] + 8]
        return f"offset@{a[0]} copied to @{b[0]}"
    names = t.by_label.get("ti.name.bytes", [])
    by_len: dict[int, list] = {}
    for f in names:
        by_len.setdefault(f[1], []).append(f)
    groups = [g for g in by_len.values() if len(g) >= 2]
    if not groups:
        return "no same-length names"
    a, b = rng.sample(rng.choice(groups), 2)
    if max(a[0], b[0]) + a[1] > len(buf):
        return "names gone"
    buf[b[0]:b[0] + b[1]] = buf[a[0]:a[0] + a[1]]
    return f"name@{a[0]} copied to @{b[0]}"


MUTATORS: list[tuple[Callable[..., Any], int]] = [
    (m_bitflip, 5), (m_bytes, 2), (m_truncate, 3), (m_u64, 5), (m_u32, 3), (m_value, 3), (m_splice, 2),
    (m_names_offsets, 1),
]


def make_case(templates: list[Template], seed: int, index: int) -> tuple[str, bytes]:
    """The mutated file of case (seed, index): deterministic, independent of any other case."""
    rng = random.Random(f"gguf-fuzz:{seed}:{index}")
    t = templates[rng.randrange(len(templates))]
    buf = bytearray(t.data)
    steps = [t.name]
    n = 1 if rng.random() < 0.6 else rng.randint(2, 4)
    chosen = rng.choices([m for m, _ in MUTATORS], weights=[w for _, w in MUTATORS], k=n)
    chosen.sort(key=lambda fn: fn is m_truncate)  # truncate last: the other mutators address the full file
    for fn in chosen:
        steps.append(str(fn(rng, t, buf)))
    return "; ".join(steps), bytes(buf)


# -- running one case ---------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised by the in-process alarm; a BaseException so code under test cannot swallow it."""


def _check_loaded(f: Any) -> list[str]:
    """Invariants of a loaded file: views inside the data section, disjoint, readable."""
    import numpy as np

    problems = []
    base = f._buf.__array_interface__["data"][0]
    spans = []
    for name, v in f.tensors.items():
        start = v.data.__array_interface__["data"][0] - base
        end = start + v.data.nbytes
        if not (f.data_offset <= start <= end <= f.file_size):
            problems.append(f"view {name!r} [{start}, {end}) outside data section [{f.data_offset}, {f.file_size})")
        if not np.shares_memory(v.data, f._buf):
            problems.append(f"view {name!r} does not alias the mapping")
        spans.append((start, end, name))
        _ = int(v.data[0, 0]) + int(v.data[-1, -1])  # touch both ends
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            problems.append(f"views {a[2]!r} and {b[2]!r} overlap")
    return problems


def diff_with_gguf_py(path: str, f: Any, budget_s: float = 5.0) -> list[str]:
    """Where gguf-py also reads the file, it must agree with us (catches silent wrong answers)."""
    import numpy as np

    try:
        import gguf

        r = gguf.GGUFReader(path, "r")
    except CaseTimeout:
        raise
    except BaseException:  # noqa: BLE001 - gguf-py rejecting (or choking on) a file is not our problem
        return []
    problems = []
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    if keys != list(f.metadata):
        return [f"metadata keys differ: gguf-py {len(keys)}, ours {len(f.metadata)}"]
    for k in keys:
        fld = r.fields[k]
        try:
            if fld.types and fld.types[0] == gguf.GGUFValueType.ARRAY and fld.types[-1] != gguf.GGUFValueType.STRING:
                if len(fld.types) > 2:
                    continue  # gguf-py does not parse nested arrays into values
                want: Any = [fld.parts[i] for i in fld.data]
                want = np.concatenate(want) if want else np.zeros(0)
                got = np.asarray(f.metadata[k])
                same = want.shape == got.shape and np.array_equal(want.astype(got.dtype), got,
                                                                  equal_nan=got.dtype.kind == "f")
            else:
                want = fld.contents()
                got = f.metadata[k]
                if isinstance(want, float):
                    same = np.float32(want) == np.float32(got) or (want != want and got != got)
                else:
                    same = want == got
        except UnicodeDecodeError:
            continue  # gguf-py cannot decode what we rejected... but we loaded: reported by keys/values below
        if not same:
            problems.append(f"metadata {k!r} differs from gguf-py")
    if [t.name for t in r.tensors] != list(f.tensors):
        return problems + ["tensor names differ from gguf-py"]
    for t in r.tensors:
        v = f.tensors[t.name]
        if v.shape != tuple(int(x) for x in t.shape) or int(v.type) != int(t.tensor_type):
            problems.append(f"tensor {t.name!r} shape/type differs from gguf-py")
        elif not np.array_equal(v.data.reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1)):
            problems.append(f"tensor {t.name!r} bytes differ from gguf-py")
    return problems


def _deep(path: str) -> None:
    """Past loading: build the model, tokenize, evaluate one token (errors must be documented types too)."""
    import tilellm

    with tilellm.load(path, n_ctx=16, n_threads=1, backend="reference") as m:
        ids = m.tokenize("Hi there")
        m.detokenize(ids)
        m.eval([0])


def run_case(templates: list[Template], seed: int, index: int, workdir: str, *, diff: bool = False,
             deep: bool = False) -> tuple[str, str]:
    """Run one case in this process; returns (outcome, detail). outcome: rejected|loaded|undocumented|wrong."""
    from tilellm.errors import TileLLMError
    from tilellm.llm.gguf.reader import open_gguf

    desc, blob = make_case(templates, seed, index)
    path = os.path.join(workdir, "case.gguf")
    try:
        os.unlink(path)  # fresh inode: a view left alive from the last case keeps its own, intact file
    except FileNotFoundError:
        pass
    with open(path, "wb") as fh:
        fh.write(blob)
    try:
        f = open_gguf(path)
    except TileLLMError as e:
        return "rejected", f"{type(e).__name__}: {str(e).replace(path, '<case>')[:300]} [{desc}]"
    except CaseTimeout:
        raise
    except BaseException as e:  # noqa: BLE001 - this is exactly what we are hunting
        tb = traceback.format_exc(limit=6)
        return "undocumented", f"{type(e).__name__}: {e} [{desc}]\n{tb}"
    try:
        problems = _check_loaded(f)
        if diff and not problems:
            problems = diff_with_gguf_py(path, f)
    finally:
        f.close()
    if problems:
        return "wrong", "; ".join(problems[:5]) + f" [{desc}]"
    if deep:
        try:
            _deep(path)
        except TileLLMError as e:
            return "rejected", f"{type(e).__name__}: deep: {str(e).replace(path, '<case>')[:200]} [{desc}]"
        except CaseTimeout:
            raise
        except BaseException as e:  # noqa: BLE001
            return "undocumented", f"deep: {type(e).__name__}: {e} [{desc}]\n{traceback.format_exc(limit=8)}"
    return "loaded", desc


def run_case_guarded(templates: list[Template], seed: int, index: int, workdir: str, timeout_s: float,
                     **kw: Any) -> tuple[str, str]:
    """run_case under a SIGALRM guard (main thread only): a Python-level hang becomes outcome 'hang'."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return run_case(templates, seed, index, workdir, **kw)
    except CaseTimeout:
        return "hang", f"case {seed}:{index} exceeded {timeout_s} s [{make_case(templates, seed, index)[0]}]"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- schema-aware cases --------------------------------------------------------------------------
# Byte mutations rarely reach the model's hyper-parameters with a *plausible* file around them. These cases
# instead take a fixture's parsed metadata and change the type or value of the keys the loaders read (every
# architecture's schema below, the tokenizer's fields, the chat template), then build the tokenizer and the
# model, tokenize, generate two tokens and (for template cases) render the chat prompt. Values are the ones
# the reader can produce (int, float, bool, str, numpy arrays, lists of strings / arrays).

LLAMA_KEYS = [
    "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.dimension_count",
    "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.scaling.type", "rope.scaling.factor",
    "rope.scaling.original_context_length", "rope.scaling.yarn_log_multiplier", "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow", "rope.scaling.yarn_ext_factor", "rope.scaling.yarn_attn_factor", "vocab_size",
]
SCHEMA: dict[str, list[str]] = {
    "llama": LLAMA_KEYS,
    "qwen2": LLAMA_KEYS,
    "gemma3": LLAMA_KEYS + ["attention.sliding_window", "attention.sliding_window_pattern", "rope.local_freq_base",
                            "attention.scale", "final_logit_softcapping"],
    "qwen3": LLAMA_KEYS,
    "phi3": LLAMA_KEYS + ["rope.scaling.attn_factor"],
    "gemma2": LLAMA_KEYS + ["attention.sliding_window", "attention.sliding_window_pattern", "attention.scale",
                            "attn_logit_softcapping", "final_logit_softcapping"],
    "granite": LLAMA_KEYS + ["embedding_scale", "residual_scale", "attention.scale", "logit_scale"],
    "qwen3moe": LLAMA_KEYS + ["expert_count", "expert_used_count", "expert_feed_forward_length"],
    "qwen2moe": LLAMA_KEYS + ["expert_count", "expert_used_count", "expert_feed_forward_length",
                              "expert_shared_feed_forward_length"],
    "deepseek2": LLAMA_KEYS + [
        "attention.kv_lora_rank", "attention.q_lora_rank", "attention.key_length_mla", "attention.value_length_mla",
        "leading_dense_block_count", "expert_count", "expert_feed_forward_length", "expert_shared_count",
        "expert_gating_func", "expert_used_count", "expert_group_count", "expert_group_used_count",
        "expert_weights_norm", "expert_weights_scale"],
}
TOKENIZER_KEYS = [
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
]
GENERAL_KEYS = ["general.architecture", "general.file_type"]
# Chat-template payloads (issue #14, finding 1): bombs, escapes, broken syntax, deep nesting, a wrong type.
TEMPLATE_PAYLOADS: list[Any] = [
    "{% for i in range(100) %}{{'x'*1048576}}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set ns = namespace(x=10**1000) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    "{{ 'x'.center(500000000) }}",
    "{{ '%500000000s' % 'x' }}",
    "{{ '{:>500000000}'.format('x') }}",
    "{{ (['x' * 1000000] * 1000) | join | length }}",
    "{{ [[[[[1]]]]] | tojson(indent=100000000) | length }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception('refused') }}",
    "{% for %}",
    "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
    "{{ 'x' * 100000 }}",  # fits the renderer, not a 32-token context: refused before tokenizing
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}",
    "",
    12345,
    ["{{ 1 }}"],
]
_INTS = [0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
_FLOATS = [0.0, -0.0, 0.5, -1.0, 1.0, 1e-310, 1e308, float("inf"), float("-inf"), float("nan")]
_OTHER: list[Any] = [True, False, "", "x", "1", "inf", "yarn", "linear", "none", "llama", "gpt2"]


def _arrays() -> list[Any]:
    import numpy as np

    return [np.zeros(0, np.int32), np.array([1, 2, 3], np.int32), np.array([np.nan, np.inf], np.float32),
            np.array([True, False]), ["a", "b"], [np.array([1], np.int32)], np.array([2**31 - 1], np.int64)]


def _retype(rng: random.Random, v: Any) -> tuple[Any, str]:
    """`v` with its type changed but its value kept where that means something."""
    import numpy as np

    if isinstance(v, np.ndarray) or isinstance(v, list):
        n = len(v)
        choice = rng.randrange(6)
        if choice == 0 and n:
            return (v[0].item() if isinstance(v, np.ndarray) else v[0]), "first element only"
        if choice == 1:
            return v[: max(0, n - 1)], "one entry short"
        if choice == 2:
            return (np.concatenate([v, v[:1]]) if isinstance(v, np.ndarray) else list(v) + list(v[:1])), "one more"
        if choice == 3:
            return [str(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)], "as strings"
        if choice == 4:
            return np.full(n, np.nan, np.float32), "all NaN"
        return np.full(n, 3e38, np.float32), "huge floats"
    if isinstance(v, bool):
        return rng.choice([int(v), float(v), str(v)]), "bool retyped"
    if isinstance(v, int):
        as_array = np.array([v], np.int64 if -(2**63) <= v < 2**63 else np.uint64)
        return rng.choice([float(v), str(v), as_array, bool(v % 2), float("inf")]), "int retyped"
    if isinstance(v, float):
        return rng.choice([int(v) if v == v and abs(v) < 1e18 else 0, str(v), np.array([v], np.float32),
                           True]), "float retyped"
    if isinstance(v, str):
        return rng.choice([len(v), float(len(v)), [v], np.frombuffer(v.encode()[:64] or b"x", np.uint8).copy()]), \
            "str retyped"
    return None, "dropped"


def make_schema_case(metas: list[dict[str, Any]], seed: int, index: int) -> tuple[str, int, dict[str, Any], int,
                                                                                  bool]:
    """Case (seed, index): (description, template index, mutated metadata, n_ctx (0: trained), chat?)."""
    rng = random.Random(f"gguf-schema:{seed}:{index}")
    ti = rng.randrange(len(metas))
    md = dict(metas[ti])
    arch = md["general.architecture"]
    steps = [f"template {ti}"]
    if arch == "llama" and rng.random() < 0.2:  # no gemma3 fixture: a llama file whose keys claim gemma3
        md = {("gemma3." + k[len("llama."):] if k.startswith("llama.") else k): v for k, v in md.items()}
        md["general.architecture"] = arch = "gemma3"
        steps.append("as gemma3")
    chat = rng.random() < 0.04
    if chat:
        payload = rng.choice(TEMPLATE_PAYLOADS)
        md["tokenizer.chat_template"] = payload
        steps.append(f"chat_template={str(payload)[:40]!r}")
    keys = [f"{arch}.{k}" for k in SCHEMA.get(arch, LLAMA_KEYS)] + TOKENIZER_KEYS + GENERAL_KEYS
    for _ in range(0 if chat and rng.random() < 0.5 else 1 if rng.random() < 0.7 else rng.randint(2, 3)):
        key = rng.choice(keys)
        r = rng.random()
        if r < 0.1:
            md.pop(key, None)
            steps.append(f"del {key}")
            continue
        if r < 0.55 or key not in md:
            v = rng.choice(_INTS + _FLOATS + _OTHER + _arrays())
            what = "set"
        else:
            v, what = _retype(rng, md[key])
        if v is None:
            md.pop(key, None)
        else:
            md[key] = v
        shown = repr(v.tolist() if hasattr(v, "tolist") else v)
        steps.append(f"{key} {what} {shown[:40]}")
    n_ctx = 0 if rng.random() < 0.15 else 32
    return "; ".join(steps), ti, md, n_ctx, chat


class _MetaView:
    """A loaded fixture with its metadata replaced (what the model classes read of a file)."""

    def __init__(self, f: Any, md: dict[str, Any]) -> None:
        self.metadata, self.tensors, self.path = md, f.tensors, "<case>"
        self.arch = md.get("general.architecture")

    def check_unchanged(self) -> None:
        pass

    def close(self) -> None:  # the fixture stays open for the next case
        pass


class SchemaRunner:
    """Runs schema cases in this process against fixtures opened once; no case may raise the process's peak RSS
    more than `rss_limit_mb` above where it stood when the runner was made."""

    def __init__(self, paths: list[Path], rss_limit_mb: float = 1024.0) -> None:
        from tilellm.llm.gguf.reader import open_gguf

        self.files = [open_gguf(p) for p in paths]
        self.metas = [dict(f.metadata) for f in self.files]
        import resource

        # the limit is on growth past the peak so far (ru_maxrss is a high-water mark: a test process may have
        # peaked before the fuzzer ran)
        self.rss_limit_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + rss_limit_mb
        self._tok: dict[int, Any] = {}
        self._backend: Any = None

    def tokenizer(self, ti: int, md: dict[str, Any]) -> Any:
        from tilellm.llm.text.factory import load_tokenizer

        base = self.metas[ti]
        same = all(md.get(k, ...) is base.get(k, ...) for k in TOKENIZER_KEYS)
        if not same:
            return load_tokenizer(md)
        if ti not in self._tok:
            self._tok[ti] = load_tokenizer(base)
        return self._tok[ti]

    def run(self, seed: int, index: int) -> tuple[str, str]:
        import resource
        import warnings

        from tilellm import backend as backends
        from tilellm.errors import TileLLMError
        from tilellm.llm.api import Model, _arch_factory

        desc, ti, md, n_ctx, chat = make_schema_case(self.metas, seed, index)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # n_ctx beyond the training context warns, by design
                if self._backend is None:
                    self._backend = backends.get("auto", 1)
                factory = _arch_factory(md.get("general.architecture"))
                tok = self.tokenizer(ti, md)
                decoder = factory(_MetaView(self.files[ti], md), self._backend, n_ctx, 8, "default")
                m = Model(_MetaView(self.files[ti], md), decoder, tok, self._backend, n_batch=8, seed=0)
                ids = m.tokenize("Hello world", add_bos=False)
                m.generate(ids[: m.n_ctx - 2] or "Hi", max_tokens=2, temperature=0.0)
                m.generate("Hi", max_tokens=1, temperature=0.7, seed=1)
                if chat:
                    m.chat_prompt([{"role": "user", "content": "hi"}])
            outcome, detail = "loaded", desc
        except TileLLMError as e:
            outcome, detail = "rejected", f"{type(e).__name__}: {str(e)[:300]} [{desc}]"
        except CaseTimeout:
            raise
        except BaseException as e:  # noqa: BLE001 - what we hunt
            outcome, detail = "undocumented", f"{type(e).__name__}: {e} [{desc}]\n{traceback.format_exc(limit=8)}"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if peak > self.rss_limit_mb:
            return "memory", f"peak RSS {peak:.0f} MB > {self.rss_limit_mb:.0f} MB [{desc}]"
        return outcome, detail


def run_schema_guarded(runner: SchemaRunner, seed: int, index: int, timeout_s: float) -> tuple[str, str]:
    """runner.run under a SIGALRM guard: a Python-level hang becomes outcome 'hang'."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return runner.run(seed, index)
    except CaseTimeout:
        return "hang", f"case {seed}:{index} exceeded {timeout_s} s [{make_schema_case(runner.metas, seed, index)[0]}]"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _limit_address_space(extra_mb: int) -> None:
    """Cap this process's address space at its current size + `extra_mb` (soft limit; children may lower it)."""
    import resource

    with open("/proc/self/statm", "rb") as f:
        vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = vsize + extra_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))


# -- subprocess batches ---------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> int:
    if args.schema:
        runner = SchemaRunner([Path(p) for p in args.templates])
        if sys.platform.startswith("linux"):
            _limit_address_space(args.mem_mb)
        for i in range(args.start, args.stop):
            sys.stdout.write(f"B {i}\n")
            sys.stdout.flush()
            outcome, detail = run_schema_guarded(runner, args.seed, i, args.timeout)
            sys.stdout.write(f"E {i} {outcome} {json.dumps(detail)}\n")
            sys.stdout.flush()
        return 0
    templates = load_templates([Path(p) for p in args.templates])
    with tempfile.TemporaryDirectory(prefix="gguf-fuzz-") as wd:
        out = sys.stdout
        for i in range(args.start, args.stop):
            out.write(f"B {i}\n")
            out.flush()
            outcome, detail = run_case(templates, args.seed, i, wd, diff=args.diff, deep=args.deep)
            out.write(f"E {i} {outcome} {json.dumps(detail)}\n")
            out.flush()
    return 0


@dataclass
class Summary:
    n: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("rejected", "loaded", "crash", "hang", "undocumented", "wrong", "memory"), 0))
    failures: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, index: int, outcome: str, detail: str) -> None:
        self.n += 1
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if outcome not in ("rejected", "loaded"):
            self.failures.append(f"case {index}: {outcome}: {detail}")
        elif outcome == "rejected":
            # group messages by their leading words, for the report
            exc, _, msg = detail.partition(": ")
            msg = msg.rsplit(" [", 1)[0].replace("<case>: ", "")  # drop the trailing [mutation description]
            msg = re.sub(r"'[^']*'(\[\d+\])?", "'…'", msg)  # names of keys/tensors
            msg = re.sub(r"\(in .*", "", re.sub(r"#?\d+", "N", msg))
            key = f"{exc}: {' '.join(msg.split()[:7])}"
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def line(self) -> str:
        c = self.counts
        return (f"{self.n} cases: {c['rejected']} rejected cleanly, {c['loaded']} loaded, {c['crash']} crashes, "
                f"{c['hang']} hangs, {c['undocumented']} undocumented exceptions, {c['wrong']} wrong answers, "
                f"{c['memory']} over the memory limit")


def run_batches(n: int, seed: int = 1, batch: int = 500, timeout_s: float = 20.0, templates: list[Path] | None = None,
                diff: bool = False, deep: bool = False, jobs: int = 1, progress: bool = False,
                schema: bool = False, mem_mb: int = 2048) -> Summary:
    """Run cases [0, n) in worker subprocesses; a worker that dies or stalls is recorded and replaced."""
    paths = [str(p) for p in (templates or find_templates())]
    if not paths:
        raise SystemExit("no template GGUFs found (tests/data/*.gguf)")
    summary = Summary()
    t0 = time.perf_counter()
    todo = [(s, min(s + batch, n)) for s in range(0, n, batch)]
    running: list[dict[str, Any]] = []
    sel = selectors.DefaultSelector()

    def spawn(start: int, stop: int) -> None:
        cmd = [sys.executable, __file__, "--worker", "--seed", str(seed), "--start", str(start), "--stop", str(stop),
               "--templates", *paths] + (["--diff"] if diff else []) + (["--deep"] if deep else []) + (
                   ["--schema", "--mem-mb", str(mem_mb), "--timeout", str(timeout_s)] if schema else [])
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        st = {"p": p, "start": start, "stop": stop, "cur": None, "next": start,
              "deadline": time.monotonic() + timeout_s + 30}
        sel.register(p.stdout, selectors.EVENT_READ, st)
        running.append(st)

    def finish(st: dict[str, Any], outcome: str | None) -> None:
        sel.unregister(st["p"].stdout)
        running.remove(st)
        p = st["p"]
        if outcome == "hang":
            p.kill()
        p.wait()
        err = p.stderr.read() if p.stderr else ""
        if st["cur"] is not None:  # died or stalled inside a case
            kind = outcome or "crash"
            summary.add(st["cur"], kind, f"exit {p.returncode}; stderr: {err[-500:]}")
            nxt = st["cur"] + 1
        else:
            nxt = st["next"]
            if nxt < st["stop"]:  # died between cases: count it as a crash of the next one
                summary.add(nxt, "crash", f"worker exited {p.returncode} between cases: {err[-500:]}")
                nxt += 1
        if nxt < st["stop"]:
            todo.insert(0, (nxt, st["stop"]))

    while todo or running:
        while todo and len(running) < jobs:
            spawn(*todo.pop(0))
        for key, _ in sel.select(timeout=0.5):
            st = key.data
            line = key.fileobj.readline()
            if not line:
                finish(st, None)
                continue
            if line.startswith("B "):
                st["cur"] = int(line.split()[1])
                st["deadline"] = time.monotonic() + timeout_s
            elif line.startswith("E "):
                _, i, outcome, detail = line.rstrip("\n").split(" ", 3)
                summary.add(int(i), outcome, json.loads(detail))
                st["cur"], st["next"] = None, int(i) + 1
                if progress and summary.n % 1000 == 0:
                    print(f"  {summary.line()} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        now = time.monotonic()
        for st in list(running):
            if now > st["deadline"]:
                if st["cur"] is None:
                    st["cur"] = st["next"]
                finish(st, "hang")
    summary.seconds = time.perf_counter() - t0
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--cases", type=int, default=int(os.environ.get("TILELLM_FUZZ_CASES", "1000")))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=500, help="cases per worker subprocess")
    ap.add_argument("-j", "--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--diff", action="store_true", help="compare loaded cases with gguf-py's reader")
    ap.add_argument("--deep", action="store_true", help="also tilellm.load + one eval of loaded cases")
    ap.add_argument("--schema", action="store_true",
                    help="schema-aware cases: retyped / extreme values of every known metadata key and chat template")
    ap.add_argument("--mem-mb", type=int, default=2048, help="--schema: address space each worker may add (MiB)")
    ap.add_argument("--case", help="SEED:INDEX: rebuild one case, run it in-process, print the outcome")
    ap.add_argument("--out", help="with --case: also write the mutated file here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--templates", nargs="*", default=None,
                    help="template GGUFs (default: tests/data, shared fixtures)")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    tpl = [Path(p) for p in args.templates] if args.templates else find_templates()
    if args.case and args.schema:
        seed, index = map(int, args.case.split(":"))
        outcome, detail = SchemaRunner(tpl).run(seed, index)
        print(f"{outcome}: {detail}")
        return 0 if outcome in ("rejected", "loaded") else 1
    if args.case:
        seed, index = map(int, args.case.split(":"))
        templates = load_templates(tpl)
        desc, blob = make_case(templates, seed, index)
        if args.out:
            Path(args.out).write_bytes(blob)
        with tempfile.TemporaryDirectory() as wd:
            outcome, detail = run_case(templates, seed, index, wd, diff=args.diff, deep=args.deep)
        print(f"{outcome}: {detail}")
        return 0 if outcome in ("rejected", "loaded") else 1
    s = run_batches(args.cases, args.seed, args.batch, args.timeout, tpl, args.diff, args.deep, args.jobs,
                    progress=True, schema=args.schema, mem_mb=args.mem_mb)
    print(f"templates: {', '.join(p.name for p in tpl)}")
    print(f"seed {args.seed}, {args.jobs} worker(s), {s.seconds:.1f} s")
    reasons = sorted(s.reasons.items(), key=lambda kv: -kv[1])
    print("most common rejections by open_gguf:")
    for reason, k in [r for r in reasons if ": deep: " not in r[0]][:25]:
        print(f"  {k:6d}  {reason}")
    deep = [r for r in reasons if ": deep: " in r[0]]
    if deep:
        print("rejections after open_gguf (tilellm.load / tokenize / eval):")
        for reason, k in deep:
            print(f"  {k:6d}  {reason}")
    for f in s.failures[:20]:
        print("FAIL", f)
    print(s.line())
    bad = sum(s.counts[k] for k in ("crash", "hang", "undocumented", "wrong", "memory"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
