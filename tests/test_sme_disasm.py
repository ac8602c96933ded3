"""Static checks on the built arm64 SME modules (disassembled with llvm-objdump; run by .ci/arm.sh
after the cross build, skipped where no arm64 module or no llvm-objdump is around).

The SME2 f32 micro-kernel's inner loop must issue, per k step, four FMOPAs (za0..za3, one per
tile, all with the same A vector) for ONE single-register A load and ONE four-register B load
(MpGEMM's 16x64 kernel, docs/mpgemm.md); the SME1 one the same with four single-register B
loads. The streaming function must not contain any Advanced SIMD (NEON) instruction (an Apple
M4 has no FEAT_SME_FA64, so NEON traps in streaming mode) and must save d8-d15.
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


def fmopa_loop(variant: str):
    body = next((b for b in loops(disassemble(variant)) if any(mn == "fmopa" for _, mn, _ in b)), None)
    assert body is not None, f"no loop with FMOPA in {variant}'s {FUNC}"
    return body


def classify(body):
    fmopa = [ops for _, mn, ops in body if mn == "fmopa"]
    loads = [ops for _, mn, ops in body if mn.startswith("ld")]
    multi = [o for o in loads if re.match(r"\{\s*z\d+\.s\s*[,-]", o)]       # {z16.s, z20.s, ...} / {z0.s-z3.s}
    single = [o for o in loads if re.match(r"\{\s*z\d+\.[bhsd]\s*\}", o)]  # one vector (any element size)
    other = [o for o in loads if o not in multi and o not in single]
    return fmopa, multi, single, other


def check_four_tiles(fmopa, unroll):
    assert len(fmopa) == 4 * unroll
    for g in range(unroll):
        grp = fmopa[4 * g:4 * g + 4]
        tiles = sorted(re.match(r"(za\d)\.s", o).group(1) for o in grp)
        assert tiles == ["za0", "za1", "za2", "za3"], grp
        a_regs = {o.split(",")[3].strip() for o in grp}
        assert len(a_regs) == 1, f"the four FMOPAs must share one A vector: {grp}"


def test_sme2_inner_loop_four_fmopa_per_a_load_and_one_x4_b_load():
    fmopa, multi, single, other = classify(fmopa_loop("sme2"))
    u = len(multi)
    assert u >= 1, "no four-register B load in the SME2 inner loop"
    assert all(len(re.findall(r"z\d+", o.split("}")[0])) == 4 for o in multi), multi
    assert len(single) == u, f"expected {u} A-vector load(s), got {single}"
    assert not other, other
    check_four_tiles(fmopa, u)


def test_sme1_inner_loop_four_fmopa_per_a_load():
    fmopa, multi, single, other = classify(fmopa_loop("sme"))
    assert not multi, "SME1 has no multi-register loads"
    u = len(fmopa) // 4
    assert u >= 1 and len(single) == 5 * u, single   # 1 A + 4 B vectors per k step
    assert not other, other
    check_four_tiles(fmopa, u)


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
