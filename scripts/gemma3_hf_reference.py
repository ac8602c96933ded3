"""An arbiter for Gemma 3 270M that is neither tilellm nor llama.cpp: Hugging Face transformers, in float32 and float64.

Writes tests/data/gemma3/hf_reference.npz (+ .json summary), read by tests/test_gemma3_hf.py. Same weights as both
peers: transformers loads the GGUF itself (`gguf_file=`, gguf-py's dequantizers; the norms come back as w - 1 and
Gemma3RMSNorm multiplies by 1 + w) and the tokenizer comes from the same file. Recorded per dtype:
- perplexity of the text by llama-perplexity's method (BOS, non-overlapping 512-token chunks, each chunk's first
  token replaced by BOS, score positions 256..510): every scored token's nll (float64), per-chunk running PPL;
- teacher forcing on each fixture prompt + llama.cpp's greedy continuation (ids from the llama.cpp npz): top-64
  ids/logits and logsumexp at every position;
- greedy continuation (32 tokens, no KV cache: every step recomputes the whole sequence) with top-2 gaps.

transformers computes RMSNorm and the RoPE angles in float32 whatever the model dtype; for the float64 run those two
are replaced by the same formulas in float64, and attention goes through SDPA, which keeps the input dtype (the eager
path would upcast the softmax only to float32), so float64 means float64 throughout. Needs torch, transformers,
accelerate and gguf; keep them out of the project's dependencies (e.g. a venv with --system-site-packages so
tilellm's default model path resolves):

    python -m venv --system-site-packages /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch==2.13.0 transformers accelerate
    /tmp/hfvenv/bin/python scripts/gemma3_hf_reference.py [--model MODEL.gguf] [--dtypes float32,float64]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "gemma3"
TEXT = ROOT / "tests" / "data" / "text" / "declaration-of-independence.txt"
N_CTX = 512
TOPK = 64
N_GEN = 32


def _float64_patches(mod) -> None:
    """Gemma3RMSNorm and Gemma3RotaryEmbedding upcast to float32, not to float64: give them float64 versions."""
    import torch

    norm_fwd, rope_fwd = mod.Gemma3RMSNorm.forward, mod.Gemma3RotaryEmbedding.forward

    def norm(self, x):
        if x.dtype != torch.float64:
            return norm_fwd(self, x)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)

    def rope(self, x, position_ids, layer_type):
        if x.dtype != torch.float64:
            return rope_fwd(self, x, position_ids, layer_type)
        base = self.config.rope_parameters[layer_type]["rope_theta"]
        d = self.config.head_dim
        inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        f = position_ids[..., None].to(torch.float64) * inv
        emb = torch.cat((f, f), dim=-1)
        return emb.cos(), emb.sin()

    mod.Gemma3RMSNorm.forward, mod.Gemma3RotaryEmbedding.forward = norm, rope


def load(path: str, dtype_name: str):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.gemma3 import modeling_gemma3

    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32, attn_implementation="sdpa")
    if dtype_name == "float64":
        _float64_patches(modeling_gemma3)
        model = model.to(torch.float64)
        emb = model.model.embed_tokens
        emb.embed_scale = torch.tensor(math.sqrt(model.config.hidden_size), dtype=torch.float64)
    return model.eval()


def logits_of(model, ids, first: int = 0):
    """Logits (float64 numpy) at positions first.. of one sequence, from a fresh context."""
    import torch

    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([list(ids)]), use_cache=False).last_hidden_state[0, first:]
        return model.lm_head(h).to(torch.float64).numpy()


def lse(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return np.log(np.exp(x - m).sum(-1)) + m[..., 0]


def perplexity(model, toks: np.ndarray, bos: int) -> dict:
    n_chunks, first = toks.size // N_CTX, N_CTX // 2
    nll, running = [], []
    for c in range(n_chunks):
        ch = toks[c * N_CTX:(c + 1) * N_CTX].copy()
        ch[0] = bos
        lg = logits_of(model, ch[:N_CTX - 1], first)  # positions 256..510 predict 257..511
        nll.append(lse(lg) - lg[np.arange(lg.shape[0]), ch[first + 1:]])
        allnll = np.concatenate(nll)
        running.append(float(np.exp(allnll.mean())))
        print(f"  [{c + 1}]{running[-1]:.4f}", flush=True)
    allnll = np.concatenate(nll)
    n = allnll.size
    ppl = float(np.exp(allnll.mean()))
    var = float(np.mean(allnll ** 2) - allnll.mean() ** 2)
    return {"nll": np.stack(nll), "running": running, "ppl": ppl, "ppl_error": ppl * math.sqrt(var / (n - 1))}


def top(lg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.argsort(-lg, axis=-1, kind="stable")[:, :TOPK]
    return ids.astype(np.int32), np.take_along_axis(lg, ids, -1).astype(np.float32), lse(lg)


def greedy(model, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seq, gaps = [int(t) for t in prompt], []
    for _ in range(N_GEN):
        lg = logits_of(model, seq, len(seq) - 1)[0]
        t = int(np.argmax(lg))
        gaps.append(float(lg[t] - np.partition(lg, -2)[-2]))
        seq.append(t)
    return np.array(seq[len(prompt):], np.int32), np.array(gaps, np.float64)


def weight_check(model, path: str) -> dict:
    """Largest |difference| between transformers' weights (gguf-py's dequantizers) and tilellm.quant's, per type."""
    import torch

    from tilellm.llm.gguf.reader import open_gguf
    from tilellm.quant import dequantize

    sd = {k: v for k, v in model.state_dict().items()}
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    per = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
           "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
           "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    out: dict[str, float] = {}
    with open_gguf(path) as f:
        for name, tv in f.tensors.items():
            if name in names:
                hf = names[name]
            else:
                _, i, kind, _ = name.split(".")
                hf = f"model.layers.{i}.{per[kind]}.weight"
            ours = dequantize(tv.data, tv.type, tv.k).reshape(tuple(reversed(tv.shape)))
            theirs = sd[hf].to(torch.float32).numpy()
            if "norm" in name:
                theirs = theirs + np.float32(1)
            key = tv.type.name
            out[key] = max(out.get(key, 0.0), float(np.abs(ours.astype(np.float64) - theirs).max()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="GGUF (default: tilellm's embedded Gemma 3 270M)")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(DATA / "hf_reference.npz"))
    ap.add_argument("--no-weight-check", action="store_true")
    args = ap.parse_args()

    import importlib.metadata

    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    path = args.model
    if not path:
        from tilellm.llm.cli.default_model import default_model_path

        path = str(default_model_path(progress=None))
    ref = np.load(DATA / "gemma-3-270m-q4_k_m.llamacpp.npz")
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    text = TEXT.read_text(encoding="utf-8")
    toks = np.array(tok(text)["input_ids"], np.int64)
    bos = int(tok.bos_token_id)
    assert toks[0] == bos
    prompts = [str(p) for p in ref["prompts"]]
    same_prompt_ids = [tok(p)["input_ids"] == ref[f"p{i}_token_ids"].tolist() for i, p in enumerate(prompts)]

    out: dict[str, np.ndarray] = {"text_token_ids": toks.astype(np.int32), "prompts": ref["prompts"]}
    summary: dict = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gguf": importlib.metadata.version("gguf")},
        "model_sha256_note": "the GGUF of tests/data/gemma3/README.md",
        "text": str(TEXT.relative_to(ROOT)), "n_text_tokens": int(toks.size), "n_ctx": N_CTX,
        "tokenizer_matches_llamacpp_prompt_ids": same_prompt_ids,
        "attention": "sdpa", "threads": args.threads, "dtypes": {},
    }
    for dt in args.dtypes.split(","):
        t0 = time.perf_counter()
        model = load(path, dt)
        if dt == "float32" and not args.no_weight_check:
            summary["max_abs_weight_diff_vs_tilellm_quant"] = weight_check(model, path)
            print("weights vs tilellm.quant:", summary["max_abs_weight_diff_vs_tilellm_quant"], flush=True)
        print(f"{dt}: perplexity", flush=True)
        pp = perplexity(model, toks, bos)
        out[f"{dt}_ppl_nll"] = pp["nll"]
        s: dict = {"ppl_running": [round(x, 6) for x in pp["running"]], "ppl": round(pp["ppl"], 6),
                   "ppl_error": round(pp["ppl_error"], 6), "prompts": []}
        for i in range(len(prompts)):
            p, g = ref[f"p{i}_token_ids"].astype(np.int64), ref[f"p{i}_gen_ids"].astype(np.int64)
            lg = logits_of(model, np.concatenate([p, g]))
            ids, vals, l = top(lg)
            # at llama.cpp's own top-64 ids (prompt positions), to measure llama.cpp against this reference
            out[f"{dt}_p{i}_at_llamacpp_topk_logits"] = np.take_along_axis(
                lg[:p.size], ref[f"p{i}_topk_ids"].astype(np.int64), -1).astype(np.float32)
            out[f"{dt}_p{i}_forced_topk_ids"], out[f"{dt}_p{i}_forced_topk_logits"] = ids, vals
            out[f"{dt}_p{i}_forced_logsumexp"] = l.astype(np.float32)
            gen, gaps = greedy(model, p)
            out[f"{dt}_p{i}_gen_ids"], out[f"{dt}_p{i}_gen_top2_gap"] = gen, gaps.astype(np.float32)
            forced_gaps = (vals[:, 0] - vals[:, 1]).astype(np.float64)
            same = gen == g
            s["prompts"].append({
                "greedy_text": tok.decode(gen.tolist()),
                "greedy_equals_llamacpp_up_to": int(np.argmin(same)) if not same.all() else N_GEN,
                "prompt_top1_vs_llamacpp_misses":
                    [int(t) for t in np.where(ids[:p.size, 0] != ref[f"p{i}_topk_ids"][:, 0])[0]],
                "forced_gen_top1_vs_llamacpp_misses": [int(j) for j in np.where(ids[p.size - 1:-1, 0] != g)[0]],
                "forced_min_top2_gap_prompt": round(float(forced_gaps[:p.size].min()), 4),
                "min_gen_top2_gap": round(float(gaps.min()), 4),
            })
        s["seconds"] = round(time.perf_counter() - t0, 1)
        summary["dtypes"][dt] = s
        print(json.dumps(s, indent=1), flush=True)
        del model
    np.savez_compressed(args.out, **out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
