"""Open a GGUF file safely: validate every header field, then expose zero-copy tensor views.

A GGUF file is untrusted input. `open_gguf` first walks the whole header (magic, version, counts,
metadata key/values, tensor infos) with its own bounds-checked reader over a read-only mapping, so
that a malformed or malicious file fails with a `GGUFError` that names the key or tensor at fault,
before any large allocation. Only then are the tensors exposed, as `TensorView`s whose `data` are
slices of that one mapping: no weight byte is copied.

Layout (little-endian; see docs/robustness.md for the rules we enforce and why):

    header   "GGUF" u32 version (2|3) u64 n_tensors u64 n_kv
    kv       n_kv x (string key, u32 value_type, value)
    infos    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding  to a multiple of general.alignment (default 32)
    data     tensor bytes, each at data_start + offset

Strings are u64 length + UTF-8 bytes; arrays are u32 element type + u64 count + elements.
"""
from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, Callable, Container, Iterator

import numpy as np

from tilellm.quant import TYPE_INFO, GGMLType, TensorView
from tilellm.quant.errors import GGUFError, GGUFFileNotFoundError, UnsupportedError

__all__ = [
    "open_gguf", "GGUFModelFile", "GGUFFileNotFoundError", "TensorInfo", "LIMITS",
    "GGUF_MAGIC", "SUPPORTED_VERSIONS", "DEFAULT_ALIGNMENT",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used u32 counts and lengths; v2 and v3 share the layout we read
DEFAULT_ALIGNMENT = 32
HEADER_SIZE = 24  # magic, version, n_tensors, n_kv


@dataclass(frozen=True)
class _Limits:
    """Sanity limits beyond "fits in the file"; each guards memory or time, not format validity."""

    max_dims: int = 4  # GGML_MAX_DIMS
    max_nesting: int = 8  # arrays of arrays: depth bound keeps recursion shallow
    # Python objects built from metadata (strings and nested-array elements, summed over the file):
    # each costs ~50-60 bytes of RAM for >= 8 bytes of file, so bound it (real vocabularies: < 300k).
    max_metadata_objects: int = 1 << 24
    max_alignment: int = 1 << 20
    max_dim: int = (1 << 63) - 1  # ggml stores ne as int64


LIMITS = _Limits()

# GGUF metadata value types: id -> (name, struct format or None, numpy dtype or None)
_T_UINT8, _T_INT8, _T_UINT16, _T_INT16, _T_UINT32, _T_INT32, _T_FLOAT32 = 0, 1, 2, 3, 4, 5, 6
_T_BOOL, _T_STRING, _T_ARRAY, _T_UINT64, _T_INT64, _T_FLOAT64 = 7, 8, 9, 10, 11, 12

_VALUE_TYPE_NAMES = {
    0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool",
    8: "string", 9: "array", 10: "u64", 11: "i64", 12: "f64",
}
# Fixed-size scalar types: struct format (little-endian) and the numpy dtype of an array of them.
_FIXED: dict[int, tuple[struct.Struct, np.dtype]] = {
    t: (struct.Struct("<" + f), np.dtype("<" + d))
    for t, f, d in [
        (_T_UINT8, "B", "u1"), (_T_INT8, "b", "i1"), (_T_UINT16, "H", "u2"), (_T_INT16, "h", "i2"),
        (_T_UINT32, "I", "u4"), (_T_INT32, "i", "i4"), (_T_FLOAT32, "f", "f4"), (_T_BOOL, "B", "u1"),
        (_T_UINT64, "Q", "u8"), (_T_INT64, "q", "i8"), (_T_FLOAT64, "d", "f8"),
    ]
}
_INT_TYPES = {_T_UINT8, _T_INT8, _T_UINT16, _T_INT16, _T_UINT32, _T_INT32, _T_UINT64, _T_INT64}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _type_name(t: int) -> str:
    return _VALUE_TYPE_NAMES.get(t, f"#{t}")


@dataclass(frozen=True)
class TensorInfo:
    """One validated tensor-info record. `offset` is absolute (from the start of the file)."""

    name: str
    shape: tuple[int, ...]  # GGUF order, ne0 first
    type: GGMLType
    offset: int
    nbytes: int
    n_rows: int
    row_bytes: int


class _Walker:
    """Bounds-checked sequential reader over the mapped file.

    Every read first checks that the bytes exist, so a bogus length fails at once with a message
    saying where we were (`self.where`), never by over-reading or allocating.
    """

    def __init__(self, buf: Any, size: int, record: list | None = None) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.where = "the header"
        self.n_objects = 0
        # Optional (pos, nbytes, label) trace of every primitive field, for the fuzzer and debugging.
        self.record = record

    # -- primitives ---------------------------------------------------------------------------
    def fail(self, msg: str) -> GGUFError:
        return GGUFError(f"{msg} (in {self.where}, at byte {self.pos})")

    def need(self, n: int, what: str) -> None:
        left = self.size - self.pos
        if n > left:
            raise GGUFError(
                f"file truncated or corrupt: {what} needs {n} bytes but only {left} remain "
                f"(in {self.where}, at byte {self.pos} of {self.size})"
            )

    def _note(self, n: int, label: str) -> None:
        if self.record is not None:
            self.record.append((self.pos, n, label))

    def unpack(self, st: struct.Struct, what: str, label: str) -> Any:
        """One fixed-size value at the cursor (bounds-checked), the cursor moved past it."""
        self.need(st.size, what)
        self._note(st.size, label)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u32(self, what: str, label: str = "u32") -> int:
        return int(self.unpack(_U32, what, label))

    def u64(self, what: str, label: str = "u64") -> int:
        return int(self.unpack(_U64, what, label))

    def string(self, what: str, label: str = "str") -> str:
        n = self.u64(f"the length of {what}", label + ".len")
        self.need(n, f"{what} ({n} bytes)")
        self._note(n, label + ".bytes")
        raw = self.buf[self.pos:self.pos + n]
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        self.pos += n
        return s

    def unique_name(self, seen: Container[str], owner: str, noun: str, kind: str, label: str) -> str:
        """A non-empty string not in `seen` (a metadata key or a tensor name), else a GGUFError saying which."""
        name = self.string(f"the {noun} of {owner}", label)
        if not name:
            raise self.fail(f"{owner} has an empty {noun}")
        if name in seen:
            raise self.fail(f"duplicate {kind} {name!r}")
        return name

    # -- metadata values ------------------------------------------------------------------------
    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        """Parse one value of GGUF type `vtype`."""
        fixed = _FIXED.get(vtype)
        if fixed is not None:
            v = self.unpack(fixed[0], what, f"val.{_type_name(vtype)}")
            if vtype == _T_BOOL:
                if v > 1:
                    raise self.fail(f"{what}: bool value {v} is neither 0 nor 1")
                return bool(v)
            return v
        if vtype == _T_STRING:
            self._count_objects(1, what)
            return self.string(what, "val.str")
        if vtype == _T_ARRAY:
            return self.array(what, depth)
        raise self.fail(f"{what}: unknown value type {vtype} (known: 0..12)")

    def _count_objects(self, n: int, what: str) -> None:
        self.n_objects += n
        if self.n_objects > LIMITS.max_metadata_objects:
            raise self.fail(
                f"{what}: metadata holds more than {LIMITS.max_metadata_objects} strings/array elements"
            )

    def array(self, what: str, depth: int) -> Any:
        if depth >= LIMITS.max_nesting:
            raise self.fail(f"{what}: arrays nested deeper than {LIMITS.max_nesting} levels")
        etype = self.u32(f"the element type of {what}", "arr.type")
        count = self.u64(f"the element count of {what}", "arr.count")
        left = self.size - self.pos
        fixed = _FIXED.get(etype)
        if fixed is not None:
            st, dt = fixed
            nbytes = count * st.size  # Python int: no overflow
            if nbytes > left:
                raise self.fail(
                    f"{what}: array of {count} {_type_name(etype)} needs {nbytes} bytes, only {left} remain"
                )
            self._note(nbytes, f"arr.{_type_name(etype)}")
            # Copy: metadata is small and must not pin the mapping or fault if the file changes.
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).astype(dt.newbyteorder("="))
            if etype == _T_BOOL:
                if count and int(arr.max()) > 1:
                    raise self.fail(f"{what}: bool array holds a value other than 0 or 1")
                arr = arr.astype(bool)
            self.pos += nbytes
            return arr
        if etype == _T_STRING:
            if count > left // 8:  # each string needs at least its 8-byte length
                raise self.fail(f"{what}: array of {count} strings cannot fit in the {left} bytes left")
            self._count_objects(count, what)
            return self._string_array(count, what)
        if etype == _T_ARRAY:
            if count > left // 12:  # each nested array needs at least its type and count
                raise self.fail(f"{what}: array of {count} arrays cannot fit in the {left} bytes left")
            self._count_objects(count, what)
            return [self.array(f"{what}[{i}]", depth + 1) for i in range(count)]
        raise self.fail(f"{what}: array has unknown element type {etype} (known: 0..12)")

    def _string_array(self, count: int, what: str) -> list[str]:
        """Parse `count` strings. The loop body is kept minimal: vocabularies hold 32k-260k tokens."""
        buf, size, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        start = pos
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                end = pos + n
                if end > size:
                    break
                append(buf[pos:end].decode("utf-8"))
                pos = end
        except struct.error:
            pass  # length field itself runs past the end: reported below
        except UnicodeDecodeError as e:
            self.pos = pos
            raise self.fail(f"{what}[{len(out)}] is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if len(out) != count:
            self.pos = pos
            raise self.fail(f"file truncated or corrupt: {what}[{len(out)}] runs past the end of the file")
        self.pos = start
        self._note(pos - start, "arr.strings")  # one region: the fuzzer needs no per-element trace
        self.pos = pos
        return out


def _parse_header(w: _Walker) -> tuple[int, int, int]:
    """Magic, version and the two counts, each bounded by what the file can hold."""
    w.where = "the header"
    w.need(4, "the GGUF magic")
    magic = bytes(w.buf[0:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}")
    w._note(4, "magic")
    w.pos = 4
    version = w.u32("the version", "header.version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 16) in (1, 2, 3):
            raise GGUFError(f"big-endian GGUF (version {version >> 16}) is not supported")
        raise GGUFError(f"unsupported GGUF version {version} (tilellm reads versions 2 and 3)")
    n_tensors = w.u64("the tensor count", "header.n_tensors")
    n_kv = w.u64("the metadata count", "header.n_kv")
    left = w.size - w.pos
    # Minimum encodings: KV = key length 8 + 1 key byte + type 4 + 1 value byte;
    # tensor info = name length 8 + 1 name byte + n_dims 4 + one ne 8 + type 4 + offset 8.
    if n_kv > left // 14:
        raise w.fail(f"metadata count {n_kv} cannot fit in the {left} bytes after the header")
    if n_tensors > left // 33:
        raise w.fail(f"tensor count {n_tensors} cannot fit in the {left} bytes after the header")
    return version, n_tensors, n_kv


def _parse_kv(w: _Walker, n_kv: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        w.where = f"metadata entry #{i}"
        key = w.unique_name(metadata, f"metadata entry #{i}", "key", "metadata key", "kv.key")
        w.where = f"metadata entry #{i} {key!r}"
        vtype = w.u32(f"the value type of key {key!r}", "kv.type")
        metadata[key] = w.value(vtype, f"key {key!r}")
    return metadata


def _alignment(metadata: dict[str, Any]) -> int:
    a = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(a, bool) or not isinstance(a, int):
        raise GGUFError(f"general.alignment must be an integer, got {type(a).__name__} {a!r}")
    if a < 1 or a > LIMITS.max_alignment or a & (a - 1):
        raise GGUFError(f"general.alignment {a} is not a power of two between 1 and {LIMITS.max_alignment}")
    return a


def _type_of(name: str, type_id: int) -> GGMLType:
    try:
        t = GGMLType(type_id)
    except ValueError:
        t = None
    if t is None or t not in TYPE_INFO:
        known_name = None
        try:  # gguf-py knows newer ggml types; use it only for a better message
            import gguf

            known_name = gguf.GGMLQuantizationType(type_id).name
        except Exception:  # noqa: BLE001 - any failure just means "no name"
            pass
        if known_name is not None:
            raise UnsupportedError(
                f"tensor {name!r} has ggml type {known_name} (id {type_id}), which tilellm does not support"
            )
        raise GGUFError(f"tensor {name!r} has unknown ggml type id {type_id}")
    return t


def _parse_tensor_infos(w: _Walker, n_tensors: int) -> list[tuple[str, tuple[int, ...], GGMLType, int]]:
    infos = []
    seen: set[str] = set()
    for i in range(n_tensors):
        w.where = f"tensor info #{i}"
        name = w.unique_name(seen, f"tensor #{i}", "name", "tensor name", "ti.name")
        seen.add(name)
        w.where = f"tensor info #{i} {name!r}"
        n_dims = w.u32(f"n_dims of tensor {name!r}", "ti.n_dims")
        if not 1 <= n_dims <= LIMITS.max_dims:
            raise w.fail(f"tensor {name!r} has {n_dims} dimensions (allowed: 1..{LIMITS.max_dims})")
        shape = tuple(w.u64(f"dimension {d} of tensor {name!r}", "ti.ne") for d in range(n_dims))
        for d, ne in enumerate(shape):
            if ne < 1:
                raise w.fail(f"tensor {name!r} has size 0 in dimension {d} (empty tensors are rejected)")
            if ne > LIMITS.max_dim:
                raise w.fail(f"tensor {name!r} dimension {d} = {ne} exceeds the int64 range")
        type_id = w.u32(f"the type of tensor {name!r}", "ti.type")
        t = _type_of(name, type_id)
        offset = w.u64(f"the data offset of tensor {name!r}", "ti.offset")
        infos.append((name, shape, t, offset))
    return infos


def _layout_tensors(
    raw: list[tuple[str, tuple[int, ...], GGMLType, int]], data_start: int, file_size: int, alignment: int,
    strict_layout: bool = True,
) -> list[TensorInfo]:
    """Sizes (in Python ints: no overflow) and byte ranges; every range inside the data section, no overlap.

    With `strict_layout` (the default) tensors must also be stored back to back in file order, each padded
    to the alignment (llama.cpp's loader requires this too), and nothing may follow the last one: a shifted
    offset or a size-changing corruption of a shape or type then fails loudly instead of silently reading
    the wrong bytes.
    """
    data_size = file_size - data_start
    expected = 0  # where the next tensor must start under the strict layout
    out = []
    for name, shape, t, rel in raw:
        info = TYPE_INFO[t]
        k = shape[0]
        if k % info.block_size:
            raise GGUFError(
                f"tensor {name!r}: row length {k} is not a multiple of the {t.name} block size {info.block_size}"
            )
        n_rows = 1
        for ne in shape[1:]:
            n_rows *= ne
        rb = k // info.block_size * info.type_size
        nbytes = n_rows * rb
        if rel % alignment:
            raise GGUFError(f"tensor {name!r}: data offset {rel} is not a multiple of the alignment {alignment}")
        if rel > data_size or nbytes > data_size - rel:
            raise GGUFError(
                f"tensor {name!r}: data [{rel}, {rel + nbytes}) lies outside the data section of {max(data_size, 0)} "
                f"bytes (file truncated or offset/shape corrupt)"
            )
        if strict_layout and rel != expected:
            raise GGUFError(
                f"tensor {name!r}: data offset {rel}, expected {expected} (tensors must be stored back to back in "
                f"file order, each padded to the alignment; the file is corrupt)"
            )
        expected = rel + -(-nbytes // alignment) * alignment
        out.append(TensorInfo(name, shape, t, data_start + rel, nbytes, n_rows, rb))
    if strict_layout and out and data_size > expected:
        # Trailing bytes beyond the last tensor's padding: most often the last tensor's shape or type
        # was corrupted into a smaller size, which would otherwise load silently.
        raise GGUFError(
            f"{data_size - expected} unexpected bytes after the last tensor {out[-1].name!r} (data section "
            f"should end at byte {data_start + expected}; open with strict_layout=False to accept)"
        )
    by_start = sorted(out, key=lambda ti: ti.offset)
    for a, b in zip(by_start, by_start[1:]):
        if b.offset < a.offset + a.nbytes:
            raise GGUFError(f"tensors {a.name!r} and {b.name!r} overlap in the data section")
    return out


@dataclass(frozen=True)
class _Parsed:
    version: int
    metadata: dict[str, Any]
    alignment: int
    infos: list[TensorInfo]
    data_start: int
    kv_end: int
    infos_end: int


def _parse(buf: Any, size: int, record: list | None = None, strict_layout: bool = True) -> _Parsed:
    """Validate the whole header of a GGUF image held in `buf` (size bytes). Pure: no I/O."""
    w = _Walker(buf, size, record)
    if size < HEADER_SIZE:
        if size >= 4 and bytes(buf[0:4]) != GGUF_MAGIC:
            raise GGUFError(f"not a GGUF file: magic is {bytes(buf[0:4])!r}, expected {GGUF_MAGIC!r}")
        raise GGUFError(f"file truncated: {size} bytes is shorter than the {HEADER_SIZE}-byte GGUF header")
    version, n_tensors, n_kv = _parse_header(w)
    metadata = _parse_kv(w, n_kv)
    kv_end = w.pos
    alignment = _alignment(metadata)
    raw = _parse_tensor_infos(w, n_tensors)
    infos_end = w.pos
    data_start = -(-infos_end // alignment) * alignment
    if raw and data_start > size:
        raise GGUFError(f"file truncated: data section would start at byte {data_start} but the file has {size}")
    infos = _layout_tensors(raw, data_start, size, alignment, strict_layout)
    arch = metadata.get("general.architecture")
    if arch is None:
        raise GGUFError("missing required key 'general.architecture'")
    if not isinstance(arch, str) or not arch:
        raise GGUFError(f"'general.architecture' must be a non-empty string, got {arch!r:.80}")
    return _Parsed(version, metadata, alignment, infos, data_start, kv_end, infos_end)


class GGUFModelFile:
    """A validated, memory-mapped GGUF file.

    Attributes: `path`, `version`, `metadata` (dict: scalars as Python values, strings as `str`,
    numeric arrays as 1-D numpy arrays, string arrays as `list[str]`, nested arrays as lists),
    `tensors` (dict name -> `TensorView`, in file order, data aliasing the mapping), `tensor_infos`,
    `arch`, `alignment`, `file_size`, `data_offset`.

    The views stay valid as long as you hold them, even after `close()` (the mapping is released when
    the last view is gone). Call `check_unchanged()` before touching weights if the file may be
    modified by another process: see docs/robustness.md.
    """

    def __init__(self, path: str, fd: int, mm: mmap.mmap, st: os.stat_result, parsed: _Parsed) -> None:
        self.path = path
        self.version = parsed.version
        self.metadata: dict[str, Any] = parsed.metadata
        self.alignment = parsed.alignment
        self.file_size = st.st_size
        self.data_offset = parsed.data_start
        self.tensor_infos: list[TensorInfo] = parsed.infos
        self._stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self.arch: str = parsed.metadata["general.architecture"]  # checked by _parse
        # One uint8 array over the whole mapping; every tensor's data is a slice of it (no copy).
        self._buf = np.frombuffer(mm, dtype=np.uint8)
        self.tensors: dict[str, TensorView] = {
            ti.name: TensorView(
                ti.name, ti.shape, ti.type,
                self._buf[ti.offset:ti.offset + ti.nbytes].reshape(ti.n_rows, ti.row_bytes),
            )
            for ti in parsed.infos
        }
        # Owned from here on (set last, so a failure above leaves closing to open_gguf alone).
        self._fd: int | None = fd
        self._mm: mmap.mmap | None = mm

    # -- lookups --------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """Metadata value of `key`, or `default`."""
        return self.metadata.get(key, default)

    def require(self, key: str, kind: type | tuple[type, ...] | None = None) -> Any:
        """Metadata value of `key`; GGUFError naming the key if it is missing (or not of `kind`)."""
        if key not in self.metadata:
            raise GGUFError(f"{os.path.basename(self.path)}: missing required metadata key {key!r}")
        v = self.metadata[key]
        if kind is not None:
            kinds = kind if isinstance(kind, tuple) else (kind,)
            bad_bool = isinstance(v, bool) and bool not in kinds
            if bad_bool or not isinstance(v, kinds):
                want = " or ".join(k.__name__ for k in kinds)
                raise GGUFError(f"metadata key {key!r} must be {want}, got {type(v).__name__} {v!r:.80}")
        return v

    def tensor(self, name: str) -> TensorView:
        """The tensor `name`; GGUFError naming it if the file has no such tensor."""
        self._check_open()
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{os.path.basename(self.path)}: missing tensor {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    # -- file lifetime --------------------------------------------------------------------------
    def check_unchanged(self) -> None:
        """Raise GGUFError if the mapped file was truncated or rewritten since it was opened.

        Touching a mapped page past the new end of a truncated file kills the process with SIGBUS,
        which Python cannot turn into an exception; the model calls this (one fstat, ~1 us) before
        each eval so the user gets an error instead. A file replaced by rename is harmless (we keep
        the old inode mapped) and is not reported.
        """
        self._check_open()
        try:
            st = os.fstat(self._fd)  # type: ignore[arg-type]
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot stat the open file: {e}") from e
        _, _, size0, mtime0 = self._stat
        if st.st_size < size0:
            raise GGUFError(
                f"{self.path} was truncated from {size0} to {st.st_size} bytes while in use; reopen it"
            )
        if st.st_size != size0 or st.st_mtime_ns != mtime0:
            raise GGUFError(f"{self.path} was modified while in use; reopen it")

    @property
    def closed(self) -> bool:
        return self._mm is None

    def _check_open(self) -> None:
        if self._mm is None:
            raise GGUFError(f"{self.path}: file is closed")

    def close(self) -> None:
        """Drop our references to the mapping. Views you still hold keep it alive (and valid)."""
        if self._mm is None:
            return
        self.tensors = {}
        self._buf = None  # type: ignore[assignment]
        mm, self._mm = self._mm, None
        try:
            mm.close()
        except BufferError:
            pass  # views still exported: the mapping is released when the last one is collected
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "GGUFModelFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self, _close: Any = os.close) -> None:
        # os.close bound at definition: at interpreter shutdown the module global may already be None
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                _close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.tensors)} tensors"
        return f"<GGUFModelFile {self.path!r} arch={self.arch!r} v{self.version} {state}>"


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open `path` read-only, refusing anything but a regular file (a FIFO would block, a dir is no file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise GGUFFileNotFoundError(errno.ENOENT, "GGUF file not found", path) from None
    except OSError as e:
        raise GGUFError(f"cannot open {path}: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise GGUFError(f"{path} is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise GGUFError(f"{path} is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise GGUFFileNotFoundError(errno.ENOENT, "GGUF file not found", path) from None
    except OSError as e:
        raise GGUFError(f"cannot open {path}: {e.strerror or e}") from e
    st = os.fstat(fd)  # re-check the object we actually opened
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise GGUFError(f"{path} is not a regular file")
    return fd, st


def open_gguf(path: str | os.PathLike[str], *, strict_layout: bool = True) -> GGUFModelFile:
    """Validate and map a GGUF file.

    `strict_layout=False` accepts gaps between tensors, any storage order and trailing bytes (still no
    overlap, every byte inside the file); the default requires llama.cpp's back-to-back layout and no
    bytes after the last tensor's padding. Raises `GGUFFileNotFoundError` (a `FileNotFoundError`) if the path does
    not exist, `GGUFError`
    for anything malformed (the message names the key or tensor), `UnsupportedError` for a valid
    file using a ggml tensor type tilellm has no table entry for. Never copies tensor data.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    fd, st = _open_regular(path)
    mm = None
    try:
        size = st.st_size
        try:
            if size < HEADER_SIZE:  # mmap refuses empty files; _parse reports bad magic or truncation
                _parse(os.pread(fd, size, 0), size)
            mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            parsed = _parse(mm, size, strict_layout=strict_layout)
        except (GGUFError, UnsupportedError) as e:
            raise type(e)(f"{path}: {e}") from None
        return GGUFModelFile(path, fd, mm, st, parsed)
    except BaseException:
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
        os.close(fd)
        raise


def describe_layout(path: str | os.PathLike[str]) -> tuple[_Parsed, list[tuple[int, int, str]]]:
    """Parse `path` and return the parse result plus a (pos, nbytes, label) trace of every field.

    Used by the fuzzer to aim mutations at real length/count/offset fields; handy for debugging.
    """
    with open(os.fspath(path), "rb") as f:
        data = f.read()
    record: list[tuple[int, int, str]] = []
    return _parse(data, len(data), record), record


# Re-exported for callers that parse an in-memory image (tests, the fuzzer).
parse_image: Callable[..., _Parsed] = _parse
