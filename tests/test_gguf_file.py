"""open_gguf: fixtures load exactly as gguf-py reads them, without copying; every malformed input fails clearly."""
from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tilellm.errors import GGUFError, TileLLMError, UnsupportedError
from tilellm.llm.gguf.reader import (
    LIMITS,
    GGUFFileNotFoundError,
    describe_layout,
    open_gguf,
    parse_image,
)
from tilellm.quant import GGMLType, TensorView

DATA = Path(__file__).parent / "data"
SHARED = Path("/work/shared/fixtures")
SMALL = DATA / "llama2-micro-q4_0.gguf"


def _fixtures() -> list[Path]:
    """tests/data/*.gguf, plus the shared fixtures when this machine has them."""
    found = {p.name: p for p in sorted(DATA.glob("*.gguf"))}
    for p in sorted(SHARED.glob("*.gguf")):
        found.setdefault(p.name, p)
    return list(found.values())


FIXTURES = _fixtures()
needs_small = pytest.mark.skipif(not SMALL.exists(), reason=f"{SMALL} missing (copy it from the shared fixtures)")


# ---------------------------------------------------------------------------------------------
# A tiny GGUF writer of our own, able to write *invalid* files field by field.
# ---------------------------------------------------------------------------------------------
def gstr(s: str | bytes, length: int | None = None) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b) if length is None else length) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_str(key: str, value: str) -> bytes:
    return kv(key, 8, gstr(value))


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, 4, struct.pack("<I", value))


def kv_arr(key: str, etype: int, count: int, body: bytes) -> bytes:
    return kv(key, 9, struct.pack("<IQ", etype, count) + body)


def tinfo(name: str | bytes, shape: list[int], ttype: int, offset: int, n_dims: int | None = None) -> bytes:
    nd = len(shape) if n_dims is None else n_dims
    return gstr(name) + struct.pack("<I", nd) + b"".join(struct.pack("<Q", d) for d in shape) + struct.pack(
        "<IQ", ttype, offset
    )


ARCH = kv_str("general.architecture", "llama")


def build(
    kvs: list[bytes] | None = None,
    tis: list[bytes] | None = None,
    data: bytes = b"",
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
    magic: bytes = b"GGUF",
) -> bytes:
    kvs = [ARCH] if kvs is None else kvs
    tis = [] if tis is None else tis
    head = magic + struct.pack("<IQQ", version, len(tis) if n_tensors is None else n_tensors,
                               len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tis)
    if data:
        body += b"\0" * (-len(body) % alignment) + data
    return body


def one_tensor(shape=(32, 2), ttype=0, offset=0, name="w", extra_kvs=(), data=None) -> bytes:
    """A valid file with one F32 tensor (by default) unless the arguments say otherwise."""
    nbytes = 4 * int(np.prod(shape)) if data is None else len(data)
    return build([ARCH, *extra_kvs], [tinfo(name, list(shape), ttype, offset)],
                 np.arange(nbytes, dtype=np.uint8).tobytes() if data is None else data)


def write(tmp_path: Path, blob: bytes, name: str = "t.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def rejects(tmp_path: Path, blob: bytes, *fragments: str, exc: type = GGUFError) -> str:
    """open_gguf must raise `exc` whose message contains every fragment; returns the message."""
    p = write(tmp_path, blob)
    with pytest.raises(exc) as ei:
        open_gguf(p)
    msg = str(ei.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# Fixtures: agree with gguf-py, zero copy
# ---------------------------------------------------------------------------------------------
def test_fixture_set_is_present() -> None:
    assert SMALL.exists(), "tests/data/llama2-micro-q4_0.gguf is part of the suite; restore it from the shared fixtures"


def _reader_value(field: Any) -> Any:
    import gguf

    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY and field.types[-1] != gguf.GGUFValueType.STRING:
        # contents() gives Python floats/ints; the raw parts keep gguf-py's dtype for this element type
        parts = [field.parts[i] for i in field.data]
        return np.concatenate(parts) if parts else np.zeros(0)
    return field.contents()


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_fixture_matches_gguf_reader(path: Path) -> None:
    import gguf

    r = gguf.GGUFReader(path, "r")
    with open_gguf(path) as f:
        assert f.file_size == path.stat().st_size
        assert f.arch == r.fields["general.architecture"].contents()
        assert f.alignment == r.alignment
        assert f.data_offset == r.data_offset
        # Metadata: same keys in the same order, same values (gguf-py adds GGUF.* pseudo-fields).
        keys = [k for k in r.fields if not k.startswith("GGUF.")]
        assert list(f.metadata) == keys
        for k in keys:
            want, got = _reader_value(r.fields[k]), f.metadata[k]
            if isinstance(want, np.ndarray):
                assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.ndim == 1, k
                np.testing.assert_array_equal(got, want, err_msg=k)
            elif isinstance(want, float):
                assert isinstance(got, float) and np.float32(got) == np.float32(want), k
            else:
                assert type(got) is type(want) and got == want, k
        # Tensors: same names, order, shapes (GGUF order), types and bytes.
        assert list(f.tensors) == [t.name for t in r.tensors]
        for t in r.tensors:
            v = f.tensors[t.name]
            assert isinstance(v, TensorView)
            assert v.shape == tuple(int(x) for x in t.shape), t.name
            assert int(v.type) == int(t.tensor_type), t.name
            assert v.data.dtype == np.uint8 and v.data.ndim == 2
            assert v.n_rows == int(np.prod(v.shape[1:])) if len(v.shape) > 1 else v.n_rows == 1
            assert v.data.nbytes == t.n_bytes, t.name
            assert np.array_equal(v.data.reshape(-1), np.asarray(t.data).view(np.uint8).reshape(-1)), t.name


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_views_alias_the_mapping(path: Path) -> None:
    with open_gguf(path) as f:
        whole = f._buf
        assert not whole.flags.writeable and whole.size == f.file_size
        for ti in f.tensor_infos:
            v = f.tensors[ti.name]
            assert np.shares_memory(v.data, whole), ti.name
            # The view starts exactly at the tensor's absolute offset inside the mapping.
            start = v.data.__array_interface__["data"][0] - whole.__array_interface__["data"][0]
            assert start == ti.offset and ti.offset >= f.data_offset
            assert not v.data.flags.writeable
            base = v.data
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            assert not isinstance(base, (bytes, bytearray)), "view is backed by a copy"


def test_rss_anon_does_not_grow_with_file_size() -> None:
    """Loading maps the file: anonymous (heap) memory grows by far less than the file size."""
    big = next((p for p in (DATA / "llama2-micro-f32.gguf", SHARED / "llama2-micro-f32.gguf") if p.exists()), None)
    if big is None:
        pytest.skip("llama2-micro-f32.gguf not available")
    code = textwrap.dedent(f"""
        import numpy, tilellm.quant, tilellm.llm.gguf.reader as g
        def anon():
            for line in open('/proc/self/status'):
                if line.startswith('RssAnon:'):
                    return int(line.split()[1]) * 1024
        a = anon()
        f = g.open_gguf({str(big)!r})
        s = sum(int(v.data[0, 0]) + int(v.data[-1, -1]) for v in f.tensors.values())  # touch every tensor
        b = anon()
        print(b - a, f.file_size)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    growth, size = map(int, out.stdout.split())
    assert growth < 0.25 * size, f"RssAnon grew by {growth} bytes for a {size}-byte file"


def test_big_vocabulary_parses_fast() -> None:
    """150k tokens + 150k merges: our loop-light string-array parse stays well under a second."""
    n = 150_000
    toks = [f"tok{i}" for i in range(n)]
    body = b"".join(gstr(t) for t in toks)
    merges = b"".join(gstr(f"{t} x") for t in toks)
    blob = build([ARCH, kv_arr("tokenizer.ggml.tokens", 8, n, body), kv_arr("tokenizer.ggml.merges", 8, n, merges),
                  kv_arr("tokenizer.ggml.scores", 6, n, np.arange(n, dtype="<f4").tobytes())])
    t0 = time.process_time()  # CPU time: load from other processes must not count
    parsed = parse_image(blob, len(blob))
    dt = time.process_time() - t0
    assert parsed.metadata["tokenizer.ggml.tokens"] == toks
    assert parsed.metadata["tokenizer.ggml.merges"][-1] == f"tok{n - 1} x"
    np.testing.assert_array_equal(parsed.metadata["tokenizer.ggml.scores"], np.arange(n, dtype=np.float32))
    assert dt < 1.5, f"parsing 300k strings took {dt:.2f} s"


# ---------------------------------------------------------------------------------------------
# The object: lookups, lifetime
# ---------------------------------------------------------------------------------------------
@needs_small
def test_get_require_tensor() -> None:
    with open_gguf(SMALL) as f:
        assert f.get("llama.block_count") == 2
        assert f.get("no.such.key", 7) == 7
        assert f.require("llama.block_count", int) == 2
        with pytest.raises(GGUFError, match="missing required metadata key 'no.such.key'"):
            f.require("no.such.key")
        with pytest.raises(GGUFError, match="'llama.block_count' must be str"):
            f.require("llama.block_count", str)
        with pytest.raises(GGUFError, match="must be int, got bool"):
            f.require("tokenizer.ggml.add_bos_token", int)
        t = f.tensor("token_embd.weight")
        assert t.type == GGMLType.Q4_0 and t.shape == (256, 4096) and t.data.shape == (4096, 256 // 32 * 18)
        assert "token_embd.weight" in f and "nope" not in f
        with pytest.raises(GGUFError, match="missing tensor 'blk.9.attn_q.weight'"):
            f.tensor("blk.9.attn_q.weight")
        assert isinstance(f.metadata["tokenizer.ggml.tokens"], list)
        assert f.metadata["tokenizer.ggml.tokens"][1] == "<s>"
        assert f.metadata["tokenizer.ggml.scores"].dtype == np.float32
        assert "llama" in repr(f)


@needs_small
def test_close_keeps_views_valid_and_blocks_lookups() -> None:
    f = open_gguf(SMALL)
    v = f.tensor("output_norm.weight")
    before = v.data.copy()
    f.close()
    f.close()  # idempotent
    assert f.closed
    assert np.array_equal(v.data, before)  # still readable: the view keeps the mapping alive
    with pytest.raises(GGUFError, match="closed"):
        f.tensor("output_norm.weight")
    with pytest.raises(GGUFError, match="closed"):
        f.check_unchanged()
    with open_gguf(SMALL) as g:
        assert not g.closed
    assert g.closed


def test_check_unchanged_detects_truncation_and_rewrite(tmp_path: Path) -> None:
    p = write(tmp_path, one_tensor(shape=(32, 64)))
    f = open_gguf(p)
    f.check_unchanged()  # untouched: no error
    with open(p, "r+b") as h:
        h.truncate(f.file_size - 100)  # do not touch the views after this: that would be SIGBUS
    with pytest.raises(GGUFError, match="truncated from"):
        f.check_unchanged()
    f.close()

    p2 = write(tmp_path, one_tensor(shape=(32, 64)), "b.gguf")
    g = open_gguf(p2)
    st = p2.stat()
    os.utime(p2, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # rewritten in place, same size
    with pytest.raises(GGUFError, match="modified while in use"):
        g.check_unchanged()
    g.close()

    p3 = write(tmp_path, one_tensor(shape=(32, 64)), "c.gguf")
    h3 = open_gguf(p3)
    tmp = write(tmp_path, b"replacement", "c.tmp")
    os.replace(tmp, p3)  # replaced by rename: our inode stays mapped and intact
    h3.check_unchanged()
    assert h3.tensor("w").data.shape == (64, 128)
    h3.close()


def test_minimal_valid_file_and_layout_rules(tmp_path: Path) -> None:
    """A hand-built file loads: padding to a custom alignment and trailing bytes allowed; a gap between
    tensors only with strict_layout=False (llama.cpp requires back-to-back tensors)."""
    f32 = np.arange(64, dtype="<f4").tobytes()
    tight = build([ARCH, kv_u32("general.alignment", 256)], [tinfo("a", [32, 2], 0, 0), tinfo("b", [32], 0, 256)],
                  f32 + f32[:128] + b"pad", alignment=256)  # the last tensor's padding may be partly missing
    with open_gguf(write(tmp_path, tight, "tight.gguf")) as f:
        assert np.array_equal(f.tensor("b").dequantize().reshape(-1), np.arange(32, dtype=np.float32))
    # Bytes after the last tensor's padding: most likely the last tensor shrank by corruption.
    trailing = build([ARCH], [tinfo("a", [32, 2], 0, 0), tinfo("b", [32], 0, 256)], f32 + f32[:128] + b"\0" * 200)
    rejects(tmp_path, trailing, "200 unexpected bytes after the last tensor 'b'")
    with open_gguf(write(tmp_path, trailing, "tr.gguf"), strict_layout=False) as f:
        assert f.tensor("b").shape == (32,)
    blob = build([ARCH, kv_u32("general.alignment", 64)],
                 [tinfo("a", [32, 2], 0, 0), tinfo("b", [32], 0, 512)],
                 f32 + b"\0" * (512 - len(f32)) + f32[:128] + b"trailing", alignment=64)
    rejects(tmp_path, blob, "tensor 'b': data offset 512, expected 256", "back to back")
    with open_gguf(write(tmp_path, blob), strict_layout=False) as f:
        assert f.alignment == 64 and f.data_offset % 64 == 0
        assert np.array_equal(f.tensor("a").data.view("<f4").reshape(-1), np.arange(64, dtype=np.float32))
        assert f.tensor("b").shape == (32,) and f.tensor("b").n_rows == 1
        assert np.array_equal(f.tensor("b").dequantize().reshape(-1), np.arange(32, dtype=np.float32))
    # No tensors at all: valid (a vocabulary-only file), nothing to map.
    with open_gguf(write(tmp_path, build([ARCH]), "empty.gguf")) as f:
        assert f.tensors == {} and f.arch == "llama"


def test_metadata_value_types(tmp_path: Path) -> None:
    kvs = [ARCH,
           kv("u8", 0, b"\xff"), kv("i8", 1, b"\xff"), kv("u16", 2, struct.pack("<H", 65535)),
           kv("i16", 3, struct.pack("<h", -2)), kv("u32", 4, struct.pack("<I", 2**32 - 1)),
           kv("i32", 5, struct.pack("<i", -3)), kv("f32", 6, struct.pack("<f", 0.5)), kv("b", 7, b"\x01"),
           kv("u64", 10, struct.pack("<Q", 2**64 - 1)), kv("i64", 11, struct.pack("<q", -(2**63))),
           kv("f64", 12, struct.pack("<d", 1e300)), kv_str("s", "héllo"),
           kv_arr("ai16", 3, 3, struct.pack("<3h", -1, 0, 1)), kv_arr("abool", 7, 2, b"\x00\x01"),
           kv_arr("aempty", 8, 0, b""),
           kv_arr("nested", 9, 2,
                  struct.pack("<IQ", 4, 1) + struct.pack("<I", 5) + struct.pack("<IQ", 8, 1) + gstr("x"))]
    with open_gguf(write(tmp_path, build(kvs))) as f:
        m = f.metadata
        assert (m["u8"], m["i8"], m["u16"], m["i16"], m["u32"], m["i32"]) == (255, -1, 65535, -2, 2**32 - 1, -3)
        got = (m["f32"], m["b"], m["u64"], m["i64"], m["f64"], m["s"])
        assert got == (0.5, True, 2**64 - 1, -(2**63), 1e300, "héllo")
        assert m["ai16"].dtype == np.int16 and m["ai16"].tolist() == [-1, 0, 1]
        assert m["abool"].dtype == np.bool_ and m["abool"].tolist() == [False, True]
        assert m["aempty"] == []
        assert m["nested"][0].tolist() == [5] and m["nested"][1] == ["x"]


# ---------------------------------------------------------------------------------------------
# Bad inputs, one by one, with the message checked
# ---------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError) as ei:
        open_gguf(p)
    e = ei.value
    assert isinstance(e, GGUFFileNotFoundError) and isinstance(e, GGUFError) and isinstance(e, TileLLMError)
    assert e.errno == errno.ENOENT and e.filename == str(p)
    assert "not found" in str(e) and "nope.gguf" in str(e)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="is a directory"):
        open_gguf(tmp_path)


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    p = tmp_path / "fifo"
    os.mkfifo(p)
    with pytest.raises(GGUFError, match="not a regular file"):
        open_gguf(p)  # must not block waiting for a writer


def test_not_a_gguf(tmp_path: Path) -> None:
    rejects(tmp_path, b"hello, this is a text file and certainly no model\n", "not a GGUF file", "b'hell'")
    rejects(tmp_path, b"GGML" + b"\0" * 60, "not a GGUF file", "b'GGML'")
    rejects(tmp_path, b"", "file truncated", "0 bytes")
    rejects(tmp_path, b"PK", "file truncated", "2 bytes")


def test_unsupported_versions(tmp_path: Path) -> None:
    rejects(tmp_path, build(version=1), "unsupported GGUF version 1")
    rejects(tmp_path, build(version=99), "unsupported GGUF version 99")
    rejects(tmp_path, build(version=3 << 16), "big-endian GGUF")


@needs_small
def test_truncated_at_each_section(tmp_path: Path) -> None:
    blob = SMALL.read_bytes()
    parsed, _ = describe_layout(SMALL)
    assert 24 < parsed.kv_end < parsed.infos_end <= parsed.data_start < len(blob)
    rejects(tmp_path, blob[:20], "truncated", "20 bytes")  # inside the header
    rejects(tmp_path, blob[:parsed.kv_end // 2], "truncated", "metadata entry #")  # inside the KV section
    rejects(tmp_path, blob[:(parsed.kv_end + parsed.infos_end) // 2], "truncated", "tensor info #")
    msg = rejects(tmp_path, blob[:len(blob) - 1000], "outside the data section")  # inside the data
    assert "file truncated" in msg
    rejects(tmp_path, blob[:parsed.infos_end + 1], "file truncated", "data section would start")  # no data section


def test_huge_counts(tmp_path: Path) -> None:
    rejects(tmp_path, build(n_kv=2**63), "metadata count 9223372036854775808 cannot fit")
    rejects(tmp_path, build(n_tensors=2**64 - 1), "tensor count 18446744073709551615 cannot fit")
    rejects(tmp_path, build(n_kv=2), "truncated", "metadata entry #1")  # plausible but too many


def test_huge_string_lengths(tmp_path: Path) -> None:
    rejects(tmp_path, build([gstr(b"k", 2**63) + b"\x08" * 40]), "9223372036854775808 bytes",
            "the key of metadata entry #0")
    rejects(tmp_path, build([ARCH, kv("general.name", 8, gstr(b"x", 2**64 - 1))]), "key 'general.name'",
            "18446744073709551615 bytes")
    rejects(tmp_path, build([ARCH], [gstr(b"w", 2**40) + b"\0" * 40]), "the name of tensor #0")


def test_huge_array_counts(tmp_path: Path) -> None:
    rejects(tmp_path, build([ARCH, kv_arr("tokenizer.ggml.scores", 6, 2**62, b"\0" * 16)]),
            "key 'tokenizer.ggml.scores'", "array of 4611686018427387904 f32")
    rejects(tmp_path, build([ARCH, kv_arr("tokenizer.ggml.tokens", 8, 2**63, gstr("a"))]),
            "key 'tokenizer.ggml.tokens'", "cannot fit")
    rejects(tmp_path, build([ARCH, kv_arr("nest", 9, 2**40, b"\0" * 12)]), "key 'nest'", "arrays cannot fit")
    # A count that fits the length check but whose strings run out: names the element.
    rejects(tmp_path, build([ARCH, kv_arr("tokenizer.ggml.tokens", 8, 3, gstr("a") + gstr("b") + gstr(b"c", 99))]),
            "key 'tokenizer.ggml.tokens'[2]", "past the end")


def test_metadata_object_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tilellm.llm.gguf.reader as g

    monkeypatch.setattr(g, "LIMITS", g._Limits(max_metadata_objects=10))
    rejects(tmp_path, build([ARCH, kv_arr("t", 8, 11, gstr("") * 11)]), "key 't'", "more than 10 strings")


def test_bad_value_types(tmp_path: Path) -> None:
    rejects(tmp_path, build([ARCH, kv("x", 13, b"\0" * 8)]), "key 'x'", "unknown value type 13")
    rejects(tmp_path, build([ARCH, kv_arr("x", 77, 1, b"\0" * 8)]), "key 'x'", "unknown element type 77")
    rejects(tmp_path, build([ARCH, kv("flag", 7, b"\x02")]), "key 'flag'", "bool value 2")
    rejects(tmp_path, build([ARCH, kv_arr("flags", 7, 2, b"\x01\x05")]), "key 'flags'", "bool array")


def test_nesting_limit(tmp_path: Path) -> None:
    depth = LIMITS.max_nesting + 1
    body = struct.pack("<IQ", 9, 1) * (depth - 1) + struct.pack("<IQ", 0, 0)
    rejects(tmp_path, build([ARCH, kv("deep", 9, body)]), "key 'deep'", "nested deeper than")


def test_invalid_utf8(tmp_path: Path) -> None:
    rejects(tmp_path, build([ARCH, kv(b"bad\xff", 4, b"\0" * 4)]), "key of metadata entry #1", "not valid UTF-8")
    rejects(tmp_path, build([ARCH, kv("general.name", 8, gstr(b"\xc3("))]), "key 'general.name'", "not valid UTF-8")
    rejects(tmp_path, build([ARCH, kv_arr("tokenizer.ggml.tokens", 8, 2, gstr("ok") + gstr(b"\xed\xa0\x80"))]),
            "key 'tokenizer.ggml.tokens'[1]", "not valid UTF-8")
    rejects(tmp_path, build([ARCH], [tinfo(b"w\x80", [32], 0, 0)], b"\0" * 128), "name of tensor #0", "UTF-8")


def test_duplicates(tmp_path: Path) -> None:
    rejects(tmp_path, build([ARCH, kv_u32("a.b", 1), kv_u32("a.b", 2)]), "duplicate metadata key 'a.b'")
    rejects(tmp_path, build([ARCH], [tinfo("w", [32], 0, 0), tinfo("w", [32], 0, 128)], b"\0" * 256),
            "duplicate tensor name 'w'")
    rejects(tmp_path, build([ARCH, kv_u32("", 1)]), "empty key")
    rejects(tmp_path, build([ARCH], [tinfo("", [32], 0, 0)], b"\0" * 128), "tensor #0 has an empty name")


def test_missing_or_bad_architecture(tmp_path: Path) -> None:
    rejects(tmp_path, build([kv_str("general.name", "x")]), "missing required key 'general.architecture'")
    rejects(tmp_path, build([kv_u32("general.architecture", 5)]), "'general.architecture' must be a non-empty string")


def test_alignment_rules(tmp_path: Path) -> None:
    for a in (0, 3, 48, 2**21):
        rejects(tmp_path, build([ARCH, kv_u32("general.alignment", a)]), f"general.alignment {a} is not a power of two")
    rejects(tmp_path, build([ARCH, kv_str("general.alignment", "32")]), "general.alignment must be an integer")


def test_bad_dims(tmp_path: Path) -> None:
    rejects(tmp_path, build([ARCH], [tinfo("w", [32] * 5, 0, 0)], b"\0" * 128), "tensor 'w' has 5 dimensions")
    rejects(tmp_path, build([ARCH], [tinfo("w", [32], 0, 0, n_dims=2**32 - 1)], b"\0" * 128),
            "tensor 'w' has 4294967295 dimensions")
    rejects(tmp_path, build([ARCH], [tinfo("w", [], 0, 0)], b"\0" * 128), "tensor 'w' has 0 dimensions")
    rejects(tmp_path, build([ARCH], [tinfo("w", [32, 0], 0, 0)], b"\0" * 128), "tensor 'w' has size 0 in dimension 1")
    rejects(tmp_path, build([ARCH], [tinfo("w", [32, 2**63], 0, 0)], b"\0" * 128), "exceeds the int64 range")


def test_dims_overflowing_size(tmp_path: Path) -> None:
    # ne product 2^96 x 4 bytes: computed exactly (Python int), then refused against the data section.
    msg = rejects(tmp_path, build([ARCH], [tinfo("w", [2**32, 2**32, 2**32], 0, 0)], b"\0" * 128),
                  "tensor 'w'", "outside the data section")
    assert str(4 * 2**96) in msg
    # 2^64 bytes wraps to 0 in uint64 arithmetic: must not pass as an empty tensor.
    rejects(tmp_path, build([ARCH], [tinfo("w", [2**31, 2**31], 0, 0)], b"\0" * 128), "outside the data section")


def test_row_not_multiple_of_block(tmp_path: Path) -> None:
    rejects(tmp_path, build([ARCH], [tinfo("q", [48, 2], int(GGMLType.Q4_0), 0)], b"\0" * 128),
            "tensor 'q'", "row length 48 is not a multiple of the Q4_0 block size 32")


def test_offsets(tmp_path: Path) -> None:
    rejects(tmp_path, one_tensor(offset=2**64 - 32), "tensor 'w'", "outside the data section")
    rejects(tmp_path, one_tensor(offset=4096), "tensor 'w'", "outside the data section")
    rejects(tmp_path, one_tensor(offset=8), "tensor 'w'", "offset 8 is not a multiple of the alignment 32")
    overlap = build([ARCH], [tinfo("a", [32, 2], 0, 0), tinfo("b", [32], 0, 224)], b"\0" * 512)
    rejects(tmp_path, overlap, "tensor 'b': data offset 224, expected 256")
    with pytest.raises(GGUFError, match="tensors 'a' and 'b' overlap"):
        open_gguf(write(tmp_path, overlap, "o.gguf"), strict_layout=False)
    same = build([ARCH], [tinfo("a", [32], 0, 0), tinfo("b", [32], 0, 0)], b"\0" * 512)
    with pytest.raises(GGUFError, match="overlap"):
        open_gguf(write(tmp_path, same, "s.gguf"), strict_layout=False)
    # Out of file order but disjoint: only the relaxed mode takes it.
    swapped = build([ARCH], [tinfo("a", [32], 0, 128), tinfo("b", [32], 0, 0)], b"\0" * 256)
    rejects(tmp_path, swapped, "tensor 'a': data offset 128, expected 0")
    with open_gguf(write(tmp_path, swapped, "sw.gguf"), strict_layout=False) as f:
        assert f.tensor_infos[0].offset == f.data_offset + 128


def test_unknown_tensor_types(tmp_path: Path) -> None:
    rejects(tmp_path, one_tensor(ttype=99), "tensor 'w' has unknown ggml type id 99")
    rejects(tmp_path, one_tensor(ttype=2**32 - 1), "unknown ggml type id 4294967295")
    # A real ggml type we have no table entry for: a valid file, an unsupported type.
    rejects(tmp_path, one_tensor(ttype=24), "tensor 'w'", "I8", "id 24", exc=UnsupportedError)


def test_supported_table_types_load_even_without_kernels(tmp_path: Path) -> None:
    """Types the kernels may not run (Q8_K here) still load: the model code decides what to do."""
    with open_gguf(write(tmp_path, one_tensor(shape=(256, 2), ttype=int(GGMLType.Q8_K), data=b"\0" * 584))) as f:
        assert f.tensor("w").type == GGMLType.Q8_K and f.tensor("w").data.shape == (2, 292)


def test_errors_are_documented_types(tmp_path: Path) -> None:
    """Every rejection above is a TileLLMError, and the message leads with the path."""
    p = write(tmp_path, build(version=7))
    with pytest.raises(TileLLMError) as ei:
        open_gguf(p)
    assert str(ei.value).startswith(str(p))
