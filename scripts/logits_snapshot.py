"""Snapshot of every fixture's logits and greedy tokens on every backend this machine runs.

Used to prove a change is behaviour-neutral (bit-identical results): save a snapshot on the old
commit, then compare on the new one, on the same machine.

    python scripts/logits_snapshot.py save before.npz
    python scripts/logits_snapshot.py compare before.npz      # exit 1 on any difference

Only the public API is used (``tilellm.load``, ``eval(logits_all=True)``, ``generate``), so the
script keeps working across refactors of everything below it. The KV cache is pinned to f32 (the type every
snapshot before the KV cache types had), so a snapshot compares like with like.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT_IDS = [1, 450, 3996, 1354, 1701, 432, 2204, 975, 278, 3366, 1203, 29892, 322]


def fixtures() -> list[Path]:
    paths = sorted((ROOT / "tests" / "data").glob("*.gguf"))
    from tilellm.llm.cli.default_model import default_model_path, is_available

    if is_available():
        paths.append(Path(default_model_path()))
    return paths


def snapshot(numerics: tuple[str, ...] = ("default", "ggml")) -> dict[str, np.ndarray]:
    import tilellm
    from tilellm import backend as backends

    out: dict[str, np.ndarray] = {}
    for path in fixtures():
        for be in backends.available():
            for num in numerics:
                # f32 KV pinned: the snapshot compares like with like (the default KV type is f16 since issue #18)
                kw: dict[str, str] = {"type_k": "f32", "type_v": "f32"}
                if num != "default":
                    kw["numerics"] = num
                key = f"{path.stem}|{be}|{num}"
                with tilellm.load(str(path), backend=be, n_threads=2, n_ctx=256, **kw) as m:
                    ids = [i % m.n_vocab for i in PROMPT_IDS]
                    out[key + "|logits"] = np.asarray(m.eval(ids, logits_all=True), np.float32)
                    m.reset()
                    r = m.generate(ids, max_tokens=12, temperature=0.0)  # greedy
                    out[key + "|greedy"] = np.asarray(r.tokens, np.int64)
                print(key, file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["save", "compare"])
    ap.add_argument("file")
    a = ap.parse_args()
    snap = snapshot()
    if a.action == "save":
        np.savez_compressed(a.file, **snap)
        print(f"saved {len(snap)} arrays to {a.file}")
        return 0
    ref = dict(np.load(a.file))
    bad = 0
    for k in sorted(set(ref) | set(snap)):
        if k not in ref or k not in snap:
            print(f"only in {'new' if k in snap else 'old'}: {k}")
            bad += 1
        elif ref[k].shape != snap[k].shape or not np.array_equal(ref[k], snap[k]):
            d = (np.abs(ref[k].astype(np.float64) - snap[k]).max() if ref[k].shape == snap[k].shape else "shape")
            print(f"DIFFERS: {k} (max |diff| {d})")
            bad += 1
    print(f"{len(snap)} arrays compared, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
