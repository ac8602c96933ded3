#!/usr/bin/env python3
"""Cross-compile the arm64 kernel variants on an x86 host and lay out an importable `tilellm`
for the emulated arm64 Python (used by .ci/arm.sh; see /work/shared/arm/README.md step 7).

    python3 scripts/arm_build.py --rootfs .armlab/rootfs --site .armlab/site [variants...]

* The cffi module source comes from kernels/build_variants.py (same cdef, sources and flags as
  `pip install` uses), compiled here with clang-19 for aarch64 and the rootfs as sysroot.
* SME variants additionally link scripts/arm_sme_abi_stub.S (TEST ONLY: Debian 12's arm64
  libgcc lacks the SME ABI routines).
* <site>/tilellm mirrors the package mapping of pyproject.toml with symlinks, and
  <site>/tilellm/kernels holds the arm64 modules, so nothing is written into the checkout.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "kernels"))
import build_variants as bv  # noqa: E402

SUFFIX = ".cpython-311-aarch64-linux-gnu.so"
STUB = os.path.join(ROOT, "scripts", "arm_sme_abi_stub.S")
PACKAGES = {"tilellm": "llm/_root", "tilellm/backend": "backend", "tilellm/quant": "quant", "tilellm/llm": "llm"}


def layout(site: str) -> str:
    """<site>/tilellm with symlinks to the sources; returns the kernels directory."""
    top = os.path.join(site, "tilellm")
    kdir = os.path.join(top, "kernels")
    # drop the symlinks (sources come and go), keep already-built modules of other variants
    for d in (top, kdir):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if os.path.islink(os.path.join(d, name)):
                    os.unlink(os.path.join(d, name))
    os.makedirs(kdir, exist_ok=True)
    for name in os.listdir(os.path.join(ROOT, "llm", "_root")):
        if name.endswith(".py"):
            os.symlink(os.path.join(ROOT, "llm", "_root", name), os.path.join(top, name))
    for dst, src in PACKAGES.items():
        if dst != "tilellm":
            os.symlink(os.path.join(ROOT, src), os.path.join(site, dst))
    for name in os.listdir(os.path.join(ROOT, "kernels")):
        if name.endswith(".py") or name in ("include", "src"):
            os.symlink(os.path.join(ROOT, "kernels", name), os.path.join(kdir, name))
    return kdir


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"arm_build: failed: {' '.join(cmd)}\n{r.stderr}")


def build(variant: str, rootfs: str, work: str, kdir: str, cc: list[str]) -> str:
    _, flags = bv.VARIANTS[variant]
    ok, why = bv.compiler_accepts(flags, bv.PROBE_SOURCES.get(variant))
    if not ok:
        raise SystemExit(f"arm_build: the compiler rejects {variant!r} ({why})")
    bdir = os.path.join(work, variant)
    os.makedirs(bdir, exist_ok=True)
    ffi = bv.make_ffi(variant)
    modc = os.path.join(bdir, f"_tl_{variant}.c")
    ffi.emit_c_code(modc)
    pyinc = [f"-I{rootfs}/usr/include/python3.11", f"-I{rootfs}/usr/include/aarch64-linux-gnu/python3.11"]
    common = cc + ["-fPIC"] + bv.BASE_CFLAGS + flags + bv.extra_flags() + [
        f"-I{bv.INCLUDE}", f"-I{bv.SRC}", "-Wall", "-Werror=implicit-function-declaration"]
    objs = []
    jobs = [(src, []) for src in bv.sources(variant)]
    jobs.append((modc, pyinc))
    for src, extra in jobs:
        obj = os.path.join(bdir, os.path.basename(src) + ".o")
        run(common + extra + ["-c", src, "-o", obj])
        objs.append(obj)
    if variant in ("sme", "sme2"):
        obj = os.path.join(bdir, "sme_abi_stub.o")
        run(cc + ["-fPIC", "-c", STUB, "-o", obj])
        objs.append(obj)
    out = os.path.join(kdir, f"_tl_{variant}{SUFFIX}")
    run(cc + ["-fuse-ld=lld", "-shared", "-pthread"] + objs + ["-o", out])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--site", required=True)
    ap.add_argument("--cc", default="clang-19")
    ap.add_argument("variants", nargs="*", default=["portable", "neon", "sme", "sme2"])
    a = ap.parse_args()
    rootfs, site = os.path.abspath(a.rootfs), os.path.abspath(a.site)
    cc = [a.cc, "--target=aarch64-linux-gnu", f"--sysroot={rootfs}"]
    os.environ["CC"] = " ".join(cc)  # for build_variants' compiler probe
    kdir = layout(site)
    work = os.path.join(site, "..", "build")
    todo = [v for v in a.variants if all(os.path.exists(f) for f in bv.sources(v))]
    for v in a.variants:
        if v not in todo:
            print(f"arm_build: no kernels/src/ukernel_{v}.c yet, skipping {v!r}", file=sys.stderr)
    with cf.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
        for out in ex.map(lambda v: build(v, rootfs, work, kdir, cc), todo):
            print(f"arm_build: {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
