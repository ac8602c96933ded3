"""Run by .ci/arm.sh inside the emulated arm64 Python: the CPU profile is the one we asked for, and
tilellm picks the right backends on it.  argv: expected backend.available() (comma list), SVL bits (0 = no SME)."""
import ctypes
import sys

from tilellm import backend, kernels

want = sys.argv[1].split(",")
want_svl = int(sys.argv[2])
feats = kernels.cpu_features()
libc = ctypes.CDLL(None, use_errno=True)
PR_SME_GET_VL = 64
vl = libc.prctl(PR_SME_GET_VL, 0, 0, 0, 0)
svl = (vl & 0xFFFF) * 8 if vl >= 0 else 0
got = backend.available()
print(f"  cpu features {sorted(feats)}; SVL {svl} bits; available {got}; compiled {kernels.compiled()}")
assert svl == want_svl, f"SVL is {svl} bits, expected {want_svl}: wrong qemu or -cpu"
assert got == want, f"backend.available() = {got}, expected {want}"
if "sme2" not in want:
    assert "sme2" not in feats, feats

# TILELLM_BACKEND forces each runnable variant (and "auto" picks the first).
import os  # noqa: E402

for v in want:
    os.environ["TILELLM_BACKEND"] = v
    b = backend.get()
    assert b.name == v, (v, b.name)
del os.environ["TILELLM_BACKEND"]
assert backend.get().name == want[0]
