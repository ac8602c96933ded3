"""Static checks on the built arm64 SME modules (disassembled with llvm-objdump; run by .ci/arm.sh
after the cross build, skipped where no arm64 module or no llvm-objdump is around).

The SME2 micro-kernels' inner loops must issue, per k step, four MOPAs (za0..za3, one per
tile): the 16x64 one all with the same A vector, for ONE single-register A load and ONE
four-register B load (MpGEMM's 16x64 kernel, docs/mpgemm.md); the 64x16 one all with the same
B vector, for ONE four-register A load and ONE B load. Both exist for f32 FMOPA, widening f16
FMOPA and BFMOPA. The SME1 ones the same with single-register loads only. The streaming function must not
contain any Advanced SIMD (NEON) instruction (an Apple M4 has no FEAT_SME_FA64, so NEON traps in streaming
mode) and must save d8-d15.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.environ.get("TILELLM_ARM_SITE", os.path.join(ROOT, ".armlab", "site"))
FUNC = "tl_sme_block_run"


def objdump() -> str:
    for name in ("llvm-objdump-19", "llvm-objdump"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no llvm-objdump")


def module(variant: str) -> str:
    hits = sorted(glob.glob(os.path.join(SITE, "tilellm", "kernels", f"_tl_{variant}.*aarch64*.so")))
    if not hits:
        pytest.skip(f"no arm64 build of {variant!r} under {SITE} (run .ci/arm.sh)")
    return hits[0]


def disassemble(variant: str) -> list[tuple[int, str, str]]:
    """(address, mnemonic, operands) of FUNC in the variant's module."""
    out = subprocess.run([objdump(), "-d", "--no-show-raw-insn", module(variant)], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(rf"^[0-9a-f]+ <{FUNC}>:\n(.*?)(?:\n\n|\Z)", out, re.S | re.M)
    assert m, f"{FUNC} not found in the {variant} module"
    insns = []
    for line in m.group(1).splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) >= 2 and parts[0].endswith(":"):
            insns.append((int(parts[0][:-1], 16), parts[1], parts[2] if len(parts) > 2 else ""))
    assert len(insns) > 50
    return insns


def loops(insns):
    """Bodies of the backward branches (the loops), innermost first."""
    idx = {a: i for i, (a, _, _) in enumerate(insns)}
    found = []
    for i, (addr, mn, ops) in enumerate(insns):
        if mn.startswith("b") and not mn.startswith("bl") or mn in ("cbz", "cbnz", "tbz", "tbnz"):
            t = re.search(r"0x([0-9a-f]+)", ops)
            if t and int(t.group(1), 16) < addr and int(t.group(1), 16) in idx:
                found.append(insns[idx[int(t.group(1), 16)]:i + 1])
    return sorted(found, key=len)


MOPA = ("fmopa", "bfmopa")


def mopa_loops(variant: str) -> dict[tuple[str, str, str], list]:
    """The innermost loops with a MOPA, keyed by (mnemonic, source element type, shape):
    shape "16x64" when the four MOPAs share the A (first source) register, "64x16" when they
    share the B (second source) register."""
    found = {}
    bodies = loops(disassemble(variant))
    for body in bodies:
        mops = [(mn, ops) for _, mn, ops in body if mn in MOPA]
        addrs = {a for a, _, _ in body}
        if not mops or any(len(o) < len(body) and {a for a, _, _ in o} <= addrs for o in bodies):
            continue  # no MOPA, or an outer loop
        srcs = [[o.strip() for o in ops.split(",")[3:5]] for _, ops in mops]
        kinds = {(mn, src[0].split(".")[1]) for (mn, _), src in zip(mops, srcs)}
        assert len(kinds) == 1, f"one MOPA flavour per micro-kernel loop: {mops}"
        shape = "16x64" if len({a for a, _ in srcs}) == 1 else "64x16" if len({b for _, b in srcs}) == 1 else "?"
        key = (*kinds.pop(), shape)
        if key not in found or len(body) < len(found[key]):  # innermost
            found[key] = body
    return found


# f32 (and dequantized q-types): FMOPA .s; f16 weights: widening FMOPA .h; bf16: BFMOPA .h
KERNELS = [(mn, el, shape) for mn, el in [("fmopa", "s"), ("fmopa", "h"), ("bfmopa", "h")]
           for shape in ("16x64", "64x16")]


def classify(body):
    fmopa = [ops for _, mn, ops in body if mn in MOPA]
    loads = [ops for _, mn, ops in body if mn.startswith("ld")]
    multi = [o for o in loads if re.match(r"\{\s*z\d+\.s\s*[,-]", o)]       # {z16.s, z20.s, ...} / {z0.s-z3.s}
    single = [o for o in loads if re.match(r"\{\s*z\d+\.[bhsd]\s*\}", o)]  # one vector (any element size)
    other = [o for o in loads if o not in multi and o not in single]
    return fmopa, multi, single, other


def check_four_tiles(fmopa, unroll, shared):
    """Groups of four MOPAs on za0..za3; `shared` = 3 (A) or 4 (B): the operand all four use."""
    assert len(fmopa) == 4 * unroll
    for g in range(unroll):
        grp = fmopa[4 * g:4 * g + 4]
        tiles = sorted(re.match(r"(za\d)\.s", o).group(1) for o in grp)
        assert tiles == ["za0", "za1", "za2", "za3"], grp
        regs = {o.split(",")[shared].strip() for o in grp}
        assert len(regs) == 1, f"the four MOPAs must share one {'A' if shared == 3 else 'B'} vector: {grp}"
        other = {o.split(",")[7 - shared].strip() for o in grp}
        assert len(other) == 4, f"four different {'B' if shared == 3 else 'A'} vectors: {grp}"


@pytest.mark.parametrize("key", KERNELS, ids=lambda k: "-".join(k))
def test_sme2_inner_loop_four_mopa_per_one_load_and_one_x4_load(key):
    """16x64: one A load + one x4 B load per four MOPAs sharing A; 64x16: one x4 A load + one
    B load per four MOPAs sharing B. Every MOPA flavour has both micro-kernels."""
    found = mopa_loops("sme2")
    assert key in found, f"no {key} micro-kernel loop in sme2's {FUNC}; found {sorted(found)}"
    fmopa, multi, single, other = classify(found[key])
    u = len(multi)
    assert u >= 1, "no four-register load in the SME2 inner loop"
    assert all(len(re.findall(r"z\d+", o.split("}")[0])) == 4 for o in multi), multi
    assert len(single) == u, f"expected {u} single-vector load(s), got {single}"
    assert not other, other
    check_four_tiles(fmopa, u, 3 if key[2] == "16x64" else 4)


@pytest.mark.parametrize("key", KERNELS, ids=lambda k: "-".join(k))
def test_sme1_inner_loop_four_mopa_per_five_loads(key):
    found = mopa_loops("sme")
    assert key in found, f"no {key} micro-kernel loop in sme's {FUNC}; found {sorted(found)}"
    fmopa, multi, single, other = classify(found[key])
    assert not multi, "SME1 has no multi-register loads"
    u = len(fmopa) // 4
    assert u >= 1 and len(single) == 5 * u, single   # 1 + 4 vectors per k step
    assert not other, other
    check_four_tiles(fmopa, u, 3 if key[2] == "16x64" else 4)


@pytest.mark.parametrize("variant", ["sme", "sme2"])
def test_streaming_function_has_no_neon_and_saves_d8_d15(variant):
    insns = disassemble(variant)
    neon = [(hex(a), mn, ops) for a, mn, ops in insns if re.search(r"\bv\d+\.\d*[bhsd]\b|\bq\d+\b", ops)]
    assert not neon, f"Advanced SIMD in streaming code (traps without FA64): {neon[:5]}"
    mns = [mn for _, mn, _ in insns]
    assert "smstart" in mns and "smstop" in mns
    saved = " ".join(ops for _, mn, ops in insns[:40] if mn in ("stp", "str"))
    for d in range(8, 16):
        assert re.search(rf"\bd{d}\b", saved), f"d{d} not saved in the prologue"
