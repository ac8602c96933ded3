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


def m_u64(rng: random.Random, t: Template, buf: bytearray) -> str:
    f = _pick_field(rng, t, ["header.n_tensors", "header.n_kv", "kv.key.len", "val.str.len", "arr.count",
                             "ti.name.len", "ti.ne", "ti.offset", "val.u64", "val.i64"])
    if f is None:
        return "no u64 field"
    pos = f[0]
    if pos + 8 > len(buf):
        return "u64 field gone"
    old = struct.unpack_from("<Q", buf, pos)[0]
    how = rng.random()
    v = rng.choice(U64_EXTREMES) if how < 0.6 else max(0, old + rng.choice([-64, -32, -1, 1, 32, 64, 4096]))
    v = min(v, 2**64 - 1)
    struct.pack_into("<Q", buf, pos, v)
    return f"{f[2]}@{pos} {old} -> {v}"


def m_u32(rng: random.Random, t: Template, buf: bytearray) -> str:
    f = _pick_field(rng, t, ["header.version", "kv.type", "arr.type", "ti.n_dims", "ti.type", "val.u32", "val.i32"])
    if f is None:
        return "no u32 field"
    pos = f[0]
    if pos + 4 > len(buf):
        return "u32 field gone"
    old = struct.unpack_from("<I", buf, pos)[0]
    v = rng.choice(U32_EXTREMES) if rng.random() < 0.6 else rng.randrange(0, 40)
    struct.pack_into("<I", buf, pos, v)
    return f"{f[2]}@{pos} {old} -> {v}"


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


# -- subprocess batches ---------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> int:
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
        ("rejected", "loaded", "crash", "hang", "undocumented", "wrong"), 0))
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
                f"{c['hang']} hangs, {c['undocumented']} undocumented exceptions, {c['wrong']} wrong answers")


def run_batches(n: int, seed: int = 1, batch: int = 500, timeout_s: float = 20.0, templates: list[Path] | None = None,
                diff: bool = False, deep: bool = False, jobs: int = 1, progress: bool = False) -> Summary:
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
               "--templates", *paths] + (["--diff"] if diff else []) + (["--deep"] if deep else [])
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
                    progress=True)
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
    bad = sum(s.counts[k] for k in ("crash", "hang", "undocumented", "wrong"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
