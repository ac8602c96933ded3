"""Build helper: one cffi extension (API mode, out-of-line) per ISA variant.

Used two ways:
  * setup.py imports it and calls ``cffi_modules()`` to pick the variants to build (machine
    architecture, kernel files present, compiler accepts the flags, $TILELLM_VARIANTS);
  * cffi's setuptools hook executes this file and calls ``ffi_<variant>()`` to get each FFI.

Every variant is compiled from the shared sources plus its own files (``variant_<name>.c`` and its
kernel files, listed in kernels/variants.py), with its own flags, and exposes the same cdef (the
header kernels/include/tilellm.h). Env: ``TILELLM_VARIANTS=portable,avx2`` restricts the set,
``TILELLM_CFLAGS`` appends flags to compile and link (e.g. ``-fsanitize=address -g``).
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INCLUDE = os.path.join(HERE, "include")
SRC = os.path.join(HERE, "src")
HEADER = os.path.join(INCLUDE, "tilellm.h")

# Compiled into every variant (with its flags). portable_kquants.c: the portable variant's K-quant kernels, and
# the SIMD K-quant kernels' fallback when their scratch cannot be had.
SHARED_SOURCES = ["api.c", "gemm.c", "act.c", "threadpool.c", "cpu_detect.c", "fma_peak.c", "attention.c", "decode.c",
                  "portable_kquants.c", "portable_qx.c"]


def _load_table():
    """kernels/variants.py, loaded by path (this file runs before the package is importable)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tilellm_kernel_variants", os.path.join(HERE, "variants.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # NamedTuple needs its module registered
    spec.loader.exec_module(mod)
    return mod


TABLE = _load_table().BY_NAME
# variant -> (machine architectures, compiler flags)
VARIANTS: dict[str, tuple[tuple[str, ...], list[str]]] = {v.name: (v.archs, list(v.flags)) for v in TABLE.values()}

# What the compiler probe compiles per variant (default: a trivial function). Flags alone are
# not enough: clang-15/16 accept some SME flags but ship no arm_sme.h / SME ACLE.
_PROBE_SME = """#include <arm_sme.h>
__arm_locally_streaming __arm_new("za") void tl_probe(float *p) {
    svbool_t pg = svptrue_b32();
    svfloat32_t v = svld1_f32(pg, p);
    svmopa_za32_f32_m(0, pg, pg, v, v);
    svst1_hor_za32(0, 0, pg, p);
}
"""
PROBE_SOURCES: dict[str, str] = {
    "neon": "#include <arm_neon.h>\nint32x4_t tl_probe(int32x4_t a, int8x16_t b) { return vdotq_s32(a, b, b); }\n"
            "float32x4_t tl_probe2(float16x4_t h) { return vcvt_f32_f16(h); }\n",
    "sme": _PROBE_SME,
    "sme2": _PROBE_SME + """__arm_locally_streaming void tl_probe2(float *p) {
    svfloat32x4_t v = svld1_f32_x4(svptrue_c32(), p);
    svst1_f32_x4(svptrue_c32(), p, v);
}
""",
}

BASE_CFLAGS = ["-O3", "-pthread", "-std=gnu11", "-fno-strict-aliasing"]
BASE_LDFLAGS = ["-pthread"]


def extra_flags() -> list[str]:
    return shlex.split(os.environ.get("TILELLM_CFLAGS", ""))


def module_name(variant: str) -> str:
    return f"tilellm.kernels._tl_{variant}"


def sources(variant: str) -> list[str]:
    """Every C file of `variant`: the shared ones, then its own (absolute paths)."""
    return [os.path.join(SRC, s) for s in SHARED_SOURCES + list(TABLE[variant].sources)]


def cdef_source() -> str:
    """The header without preprocessor lines (cffi's cdef parses plain declarations)."""
    with open(HEADER, encoding="utf-8") as f:
        text = f.read()
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _machine() -> str:
    return platform.machine().lower()


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def compiler_accepts(flags: list[str], source: str | None = None) -> tuple[bool, str]:
    """Test-compile a tiny file (or `source`) with `flags`; returns (ok, first line of the complaint)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source or "int tl_probe(int x) { return x + 1; }\n")
        cmd = _compiler() + flags + extra_flags() + ["-Werror", "-c", src, "-o", os.path.join(tmp, "probe.o")]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, str(e)
        if r.returncode == 0:
            return True, ""
        msg = (r.stderr or r.stdout).strip().splitlines()
        return False, (msg[0] if msg else f"exit status {r.returncode}")


def requested() -> list[str] | None:
    env = os.environ.get("TILELLM_VARIANTS", "").strip()
    if not env:
        return None
    names = [v.strip().lower() for v in env.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"TILELLM_VARIANTS: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return names


def buildable(variant: str) -> bool:
    """Right architecture and kernel files present (no compiler probe)."""
    archs, _ = VARIANTS[variant]
    return (not archs or _machine() in archs) and all(os.path.exists(f) for f in sources(variant))


def select_variants(verbose: bool = True) -> list[str]:
    """Variants to build here; a variant the compiler rejects gets one line on stderr."""
    want = requested()
    chosen = []
    for v, (_, flags) in VARIANTS.items():
        if want is not None and v not in want:
            continue
        if not buildable(v):
            continue
        ok, why = compiler_accepts(flags, PROBE_SOURCES.get(v))
        if not ok:
            if verbose:
                print(f"tilellm: skipping kernel variant {v!r}: compiler rejects {' '.join(flags)} ({why})",
                      file=sys.stderr)
            continue
        chosen.append(v)
    return chosen


def cffi_modules(verbose: bool = True) -> list[str]:
    """The ``cffi_modules=`` list for setup(): paths relative to the project root."""
    rel = os.path.relpath(os.path.abspath(__file__), ROOT).replace(os.sep, "/")
    return [f"{rel}:ffi_{v}" for v in select_variants(verbose)]


def make_ffi(variant: str):
    from cffi import FFI

    _, flags = VARIANTS[variant]
    ffi = FFI()
    ffi.cdef(cdef_source())
    # Relative source paths: setuptools wants them relative to setup.py's directory.
    srcs = [os.path.relpath(f, ROOT) for f in sources(variant)]
    extra = extra_flags()
    ffi.set_source(
        module_name(variant),
        '#include "tilellm.h"',
        sources=srcs,
        include_dirs=[os.path.relpath(INCLUDE, ROOT), os.path.relpath(SRC, ROOT)],
        extra_compile_args=BASE_CFLAGS + flags + extra,
        extra_link_args=BASE_LDFLAGS + extra,
    )
    return ffi


# Names cffi's setuptools hook looks up ("kernels/build_variants.py:ffi_avx2").
def ffi_portable():
    return make_ffi("portable")


def ffi_avx2():
    return make_ffi("avx2")


def ffi_avx512():
    return make_ffi("avx512")


def ffi_neon():
    return make_ffi("neon")


def ffi_sme():
    return make_ffi("sme")


def ffi_sme2():
    return make_ffi("sme2")


assert all(callable(globals()[f"ffi_{v}"]) for v in VARIANTS)
