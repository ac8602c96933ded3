"""The kernel variants, listed once: the build (kernels/build_variants.py), the loader (kernels/_lib.py) and the
backend registry all read this table.

No imports from the package: setup.py loads this file by path before anything is built.
"""
from __future__ import annotations

from typing import NamedTuple

X86 = ("x86_64", "amd64", "i386", "i686", "x86")
ARM = ("aarch64", "arm64", "armv8l", "armv8b")


class Variant(NamedTuple):
    name: str
    archs: tuple[str, ...]  # machine architectures it builds on; () = all
    flags: tuple[str, ...]  # compiler flags (what the compiler may emit, so what the CPU must have)
    requires: frozenset[str]  # CPU features (tilellm.kernels.FEATURE_BITS names) needed to import it
    sources: tuple[str, ...]  # its own files in kernels/src, besides the shared ones
    fallback: str | None  # the variant that gets the weight types it lacks


_AVX512_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx512bf16", "-mfma",
                 "-mf16c")
_AVX2 = frozenset({"avx2", "fma", "f16c"})
_AVX2_FLAGS = ("-mavx2", "-mfma", "-mf16c")
_AVX2_FLOAT_SOURCES = ("avx2_float.c", "avx2_float_packed.c")  # avx2's float kernels, also the avxvnni variant's
_NEON = frozenset({"neon", "dotprod", "fp16"})
_NEON_SOURCES = ("neon_float.c", "neon_q8.c", "neon_kquants.c", "neon_table.c", "neon_qx.c")

# Best first: the order "auto" tries them in.
TABLE: tuple[Variant, ...] = (
    Variant("avx512", X86, _AVX512_FLAGS,
            _AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "avx512bf16"},
            ("variant_avx512.c", "avx512_float.c", "avx512_float_packed.c", "avx512_q8.c", "avx512_kquants.c",
             "avx2_qx.c"), "avx2"),
    # AVX-VNNI (vpdpbusd on ymm; Alder Lake+, Zen 5): the integer types' group dots (avx2_q8.c and avx2_kquants.c
    # built again with -mavxvnni), avx2's float kernels and avx2_qx.c's (q5_1, iq4_*, q2_K, q3_K, on vpmaddubsw as in
    # avx2) linked in, so one library holds every type. Not a subset of avx512's features, so on an AVX-512 CPU avx512
    # (listed first) wins in "auto"; the cap "avx2" hides it (an AVX2-only CPU has no AVX-VNNI).
    Variant("avxvnni", X86, _AVX2_FLAGS + ("-mavxvnni",), _AVX2 | {"avx_vnni"},
            ("variant_avxvnni.c",) + _AVX2_FLOAT_SOURCES + ("avxvnni_q8.c", "avxvnni_kquants.c", "avx2_qx.c"), "avx2"),
    Variant("avx2", X86, _AVX2_FLAGS, _AVX2,
            ("variant_avx2.c",) + _AVX2_FLOAT_SOURCES + ("avx2_q8.c", "avx2_kquants.c", "avx2_qx.c"), "portable"),
    # SME: armv8.6-a (which has dotprod) + SME + fp16, never armv9-a: armv9-a implies SVE2 and the compiler would
    # auto-vectorise the non-streaming code with SVE, which an Apple M4 lacks (REFERENCE 3.6.5). fp16 is for the
    # NEON small-batch kernels linked into these variants.
    Variant("sme2", ARM, ("-march=armv8.6-a+sme2+fp16",), _NEON | {"sme", "sme2"},
            ("variant_sme2.c", "sme_mopa.c") + _NEON_SOURCES, "sme"),
    Variant("sme", ARM, ("-march=armv8.6-a+sme+fp16",), _NEON | {"sme"},
            ("variant_sme.c", "sme_mopa.c") + _NEON_SOURCES,
            "neon"),
    Variant("neon", ARM, ("-march=armv8.2-a+dotprod+fp16",), _NEON, ("variant_neon.c",) + _NEON_SOURCES, "portable"),
    # no FMA contraction, so a result does not depend on which code path (gemv or tile) the compiler happened to
    # fuse (clang contracts by default on arm64)
    Variant("portable", (), ("-ffp-contract=off",), frozenset(),
            ("variant_portable.c", "portable_float.c", "portable_q8.c"), None),
)

BY_NAME: dict[str, Variant] = {v.name: v for v in TABLE}
NAMES: tuple[str, ...] = tuple(v.name for v in TABLE)
