"""How much a q8_0 KV cache changes the logits, ours and llama.cpp's (issue #18).

For each model: the logits of every position of a few prompts with an f32 KV cache and with a q8_0 one (K and V),
in tilellm and in llama.cpp (llama-cpp-python, flash attention on, which a quantized V cache needs there), and the
mean KL divergence KL(p_f32 || p_q8_0) over the positions (natural log). The same token ids go to both engines.

    python scripts/kv_fidelity.py                      # the shared fixtures and Gemma 3 270M (demo extra)
    python scripts/kv_fidelity.py --type f16           # another cache type against f32

Needs llama-cpp-python for the llama.cpp column (tests/test_kv_cache_peer.py runs the same check as a test).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ["llama2-micro-f32", "llama2-micro-q8_0", "llama2-micro-q4_0", "llama3-micro-q8_0", "qwen2-micro-q8_0"]
GGML_IDS = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}
GEMMA_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable "
    "metal type, oil-based inks and a wooden press adapted from those used to make wine. Before him, books were "
    "copied by hand, slowly and at great cost, and only monasteries, universities and the very rich owned them. "
    "Within fifty years of his first Bible, presses were running in more than two hundred cities across Europe, "
    "and millions of volumes had been printed. Scholars could compare identical copies of a text, errors could be "
    "corrected in a new edition, and ideas travelled faster than any messenger. The Reformation, the scientific "
    "revolution and the rise of newspapers all depended on cheap printed pages. Historians still debate how much "
    "of this change was caused by the press itself and how much by the societies that adopted it.")


def kl_mean(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q)), in float64."""
    p = p_logits.astype(np.float64)
    q = q_logits.astype(np.float64)
    lp = p - p.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = q - q.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def ours(path: str, prompts: list[list[int]], t: str, backend: str = "auto") -> np.ndarray:
    """Our logits of every position of each prompt (concatenated rows) with K and V cached as type t."""
    import tilellm

    n_ctx = max(len(p) for p in prompts)
    out = []
    with tilellm.load(path, n_ctx=n_ctx, n_threads=2, backend=backend, type_k=t, type_v=t) as m:
        for p in prompts:
            m.reset()
            out.append(np.asarray(m.eval(p, logits_all=True), np.float32))
    return np.concatenate(out)


def llamacpp(path: str, prompts: list[list[int]], t: str) -> np.ndarray:
    """llama.cpp's logits of every position of each prompt with K and V cached as type t (flash attention on)."""
    from llama_cpp import Llama

    n_ctx = max(len(p) for p in prompts)
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2, type_k=GGML_IDS[t],
                type_v=GGML_IDS[t], flash_attn=True, logits_all=True, verbose=False)
    out = []
    for p in prompts:
        llm.reset()
        llm.eval(p)
        out.append(np.array(llm.scores[:len(p)], np.float32))
    llm.close()
    return np.concatenate(out)


def fixture_prompts(name: str) -> tuple[str, list[list[int]]]:
    """The GGUF path of fixture `name` and its four prompts' token ids (tests/data)."""
    data = ROOT / "tests" / "data"
    ref = np.load(data / f"{name}.npz")
    return str(data / f"{name}.gguf"), [[int(i) for i in ref[f"token_ids_p{i}"]] for i in range(4)]


def gemma_prompts() -> tuple[str, list[list[int]]] | None:
    """Gemma 3 270M (the demo extra) and a ~200-token English prompt, or None without the demo extra."""
    from tilellm.llm.cli.default_model import default_model_path, is_available

    if not is_available():
        return None
    import tilellm

    path = str(default_model_path())
    with tilellm.load(path, n_ctx=512, n_threads=1) as m:
        ids = m.tokenize(GEMMA_TEXT)
    return path, [ids]


def measure(t: str = "q8_0", with_peer: bool = True) -> dict[str, tuple[float, float | None]]:
    """{model: (our mean KL, llama.cpp's mean KL or None)} of type t against f32 KV."""
    cases = [fixture_prompts(n) for n in FIXTURES if (ROOT / "tests" / "data" / f"{n}.gguf").exists()]
    names = [n for n in FIXTURES if (ROOT / "tests" / "data" / f"{n}.gguf").exists()]
    g = gemma_prompts()
    if g is not None:
        cases.append(g)
        names.append("gemma-3-270m-q4_k_m")
    res: dict[str, tuple[float, float | None]] = {}
    for name, (path, prompts) in zip(names, cases):
        ours_kl = kl_mean(ours(path, prompts, "f32"), ours(path, prompts, t))
        peer_kl = kl_mean(llamacpp(path, prompts, "f32"), llamacpp(path, prompts, t)) if with_peer else None
        res[name] = (ours_kl, peer_kl)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="q8_0", choices=["f16", "bf16", "q8_0"])
    ap.add_argument("--no-peer", action="store_true", help="ours only (without llama-cpp-python)")
    a = ap.parse_args()
    res = measure(a.type, not a.no_peer)
    print(f"| model | tilellm mean KL ({a.type} vs f32 KV) | llama.cpp mean KL |")
    print("|---|---|---|")
    for name, (o, p) in res.items():
        print(f"| {name} | {o:.3e} | {'-' if p is None else f'{p:.3e}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
