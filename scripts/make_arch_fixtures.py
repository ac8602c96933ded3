"""Make the architecture fixtures of tests/data: seeded random tiny Hugging Face models, converted to GGUF by
llama.cpp's own converter, with references from transformers and llama.cpp.

Not part of the test suite: run it with a separate environment (torch, transformers, tokenizers, sentencepiece,
safetensors, protobuf; versions in tests/data/arch-fixtures.md) and llama.cpp's converter folder
(`convert_hf_to_gguf.py`, `conversion/`, `gguf-py/`, e.g. from the source package of llama-cpp-python==0.3.36
under `vendor/llama.cpp`); llama.cpp's logits come from an interpreter with llama-cpp-python installed:

    /work/venv-ref/bin/python scripts/make_arch_fixtures.py --convert-src DIR --lcpp-python PY [name ...]

Per model NAME it writes tests/data/NAME-f32.gguf, NAME-q8_0.gguf and one .npz per GGUF in the shared fixtures'
compact format (tests/data/arch-fixtures.md): `hf` (transformers on the original float32 weights) in the f32 one,
`hfdq` (transformers on the q8_0 file's weights, i.e. every quantized tensor quantized and dequantized by gguf-py)
in the q8_0 one, and llama.cpp's agreement with them (`meta_json`). The tokenizer is rebuilt, as a Hugging Face
tokenizer, from an existing fixture's vocabulary (tests/data/*.vocab.json), so the new GGUF carries the same
vocabulary; NAME.hf_tok.json holds the HF tokenizer's ids of the shared parity texts.

Everything is seeded: weights from torch.Generator(seed) in a fixed parameter order, conversions deterministic.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"

PROMPTS = [  # the shared fixtures' four prompts (P3 needs two 64-token chunks)
    "The capital of France is Paris, and the capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "# 10 digits: 3.14159265",
    "In 1969, Apollo 11 landed on the Moon. The mission's commander was Neil Armstrong; the lunar module pilot was",
    "Once upon a time, in a small village near the mountains, there lived an old clockmaker named Elias. "
    "Every morning he opened his shop at 7:30, wound the 12 clocks on the wall, and wrote in his notebook: "
    "\"Today I will finish the blue pendulum.\" He never did, and the children said",
]
N_GEN = 32

# llama.cpp's qwen2 pre-tokenizer regex (byte-level BPE; the converter cannot recognise a new vocabulary's hash)
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

ROPE = {"rope_type": "default", "rope_theta": 10000.0}
SPECS: dict[str, dict] = {
    # qwen3: q/k norms, head_dim (48) independent of hidden / heads (128 / 4), GQA 4:2, tied embeddings
    "qwen3-micro": dict(cls="Qwen3", tok="bpe-qwen2-4k", pre="qwen2", seed=3001, cfg=dict(
        vocab_size=4160, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=48, max_position_embeddings=2048, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_parameters=ROPE, attention_bias=False, use_sliding_window=False,
        bos_token_id=4097, eos_token_id=4096)),
    # gemma2: small soft-caps (5 on attention logits, 10 on the output) and a 16-position window on layers 0, 2,
    # so that both caps and the window change the logits of these prompts
    "gemma2-micro": dict(cls="Gemma2", tok="llama-spm-4k", spm_style="gemma", pre="default", seed=3002, cfg=dict(
        vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, max_position_embeddings=2048,
        rms_norm_eps=1e-6, rope_parameters=ROPE, attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
        sliding_window=16, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # phi3: fused qkv / gate_up, LongRoPE factors (short ones at these context sizes) with its attention factor,
    # half of each head rotated (like Phi-4 mini's partial rotary)
    # (general.name must not say "phi3" / "phi-3": llama.cpp then looks up Phi-3's "<|endoftext|>", which the reused
    # vocabulary does not have, to set tokenizer attributes)
    "phi3-micro": dict(cls="Phi3", tok="llama-spm-4k", spm_style="llama", pre="default", seed=3003,
                       model_name="micro-3003", cfg=dict(
        vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-5, partial_rotary_factor=0.5,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 4096,
                         "short_factor": [1.0 + 0.15 * i for i in range(8)],
                         "long_factor": [2.0 + 1.5 * i for i in range(8)]},
        sliding_window=None, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None)),
    # (router gain 4: sharper routing, so that q8_0 noise seldom flips a near-tie; at the shared recipe's 2 a few
    # flipped experts dominate the whole-vocabulary mean |Δ| of llama.cpp and of our kernels alike)
    "qwen3moe-micro": dict(cls="Qwen3Moe", tok="bpe-qwen2-4k", pre="qwen2", seed=3005, router_gain=4.0,
                           extra_prompts=16, cfg=dict(
        vocab_size=4160, hidden_size=128, intermediate_size=384, moe_intermediate_size=64, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=2048, rms_norm_eps=1e-6, rope_parameters=ROPE, use_sliding_window=False,
        tie_word_embeddings=True, bos_token_id=4097, eos_token_id=4096)),
    # qwen2moe: q/k/v biases, 8 experts top-2 (weights not renormalised), a sigmoid-gated shared expert; untied
    # output (llama.cpp's qwen2moe requires output.weight, as Qwen1.5-MoE has), hence hidden 64 to keep it small;
    # router (and shared-expert gate) gain 4 as for qwen3moe
    "qwen2moe-micro": dict(cls="Qwen2Moe", tok="bpe-qwen2-4k", pre="qwen2", seed=3004, router_gain=4.0,
                           extra_prompts=16, cfg=dict(
        vocab_size=4160, hidden_size=64, intermediate_size=192, moe_intermediate_size=32,
        shared_expert_intermediate_size=96, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_parameters=ROPE,
        use_sliding_window=False, qkv_bias=True, tie_word_embeddings=False, bos_token_id=4097,
        eos_token_id=4096)),
    # granite: embedding, residual, attention and logit multipliers (not Granite's own values: ones that keep the
    # activations of order one with these random weights), llama's permuted q/k
    "granite-micro": dict(cls="Granite", tok="llama-spm-4k", spm_style="llama", pre="default", seed=3006, cfg=dict(
        vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_parameters=ROPE,
        embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.05, logits_scaling=2.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None)),
}


# ------------------------------------------------------------------------------------------- tokenizers
def vocab(name: str) -> dict:
    return json.loads((DATA / f"{name}.vocab.json").read_text(encoding="utf-8"))


def bpe_tokenizer_dir(name: str, out: Path) -> None:
    """An HF byte-level BPE tokenizer (Qwen2 settings: NFC, the qwen2 split, BOS added) with exactly the vocabulary,
    merges and special tokens of fixture vocabulary `name`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    v = vocab(name)
    toks, types = v["tokenizer.ggml.tokens"], v["tokenizer.ggml.token_type"]["values"]
    normal = {t: i for i, t in enumerate(toks) if types[i] == 1}
    assert sorted(normal.values()) == list(range(len(normal))), "normal tokens must come first"
    merges = [tuple(m.split(" ", 1)) for m in v["tokenizer.ggml.merges"]]
    tk = Tokenizer(BPE(vocab=normal, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tk.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    added = [(i, toks[i], types[i] == 3) for i in range(len(toks)) if types[i] in (3, 4)]
    for i, t, special in added:  # in id order, so each lands on its id
        assert tk.get_vocab_size() == i, (tk.get_vocab_size(), i)
        (tk.add_special_tokens if special else tk.add_tokens)([AddedToken(t, special=special, normalized=False)])
    bos, eos = toks[v["tokenizer.ggml.bos_token_id"]], toks[v["tokenizer.ggml.eos_token_id"]]
    pad = toks[v["tokenizer.ggml.padding_token_id"]]
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, tk.token_to_id(bos))])
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    dec = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                    "special": s} for i, t, s in added}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False,
           "bos_token": bos, "eos_token": eos, "pad_token": pad, "clean_up_tokenization_spaces": False,
           "model_max_length": 2048, "added_tokens_decoder": dec}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos, "pad_token": pad},
                                                            ensure_ascii=False), encoding="utf-8")


def spm_tokenizer_dir(name: str, out: Path, style: str) -> None:
    """A SentencePiece BPE `tokenizer.model` with exactly the pieces, scores and types of fixture vocabulary `name`
    (what the converter reads), and the matching HF tokenizer: `style` "llama" (dummy-prefix space, Llama-2 /
    Phi-3) or "gemma" (no dummy prefix)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from transformers import AutoTokenizer

    v = vocab(name)
    toks, scores = v["tokenizer.ggml.tokens"], v["tokenizer.ggml.scores"]["values"]
    types = v["tokenizer.ggml.token_type"]["values"]
    unk, bos, eos = (v[f"tokenizer.ggml.{k}_token_id"] for k in ("unknown", "bos", "eos"))
    m = pb.ModelProto()
    for i, (t, sc, ty) in enumerate(zip(toks, scores, types)):
        piece = m.pieces.add()
        piece.piece, piece.score, piece.type = t, sc, (2 if i == unk else ty)
    ts = m.trainer_spec
    ts.model_type, ts.vocab_size, ts.byte_fallback = pb.TrainerSpec.BPE, len(toks), True
    ts.split_digits, ts.allow_whitespace_only_pieces = True, True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = unk, bos, eos, -1
    ns = m.normalizer_spec
    ns.name, ns.add_dummy_prefix, ns.remove_extra_whitespaces, ns.escape_whitespaces = (
        "identity", style == "llama", False, True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(m.SerializeToString())
    specials = {"bos_token": toks[bos], "eos_token": toks[eos], "unk_token": toks[unk]}
    with tempfile.TemporaryDirectory() as tmp:  # transformers' own conversion of the SentencePiece BPE model
        shutil.copy(out / "tokenizer.model", tmp)  # (its pieces and merges; normaliser and decoder are set below)
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer",
                                                                      **specials}))
        tk = Tokenizer.from_str(AutoTokenizer.from_pretrained(tmp)._tokenizer.to_str())
    space = [normalizers.Replace(" ", "\u2581")]
    tk.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if style == "llama" else []) + space)
    tk.pre_tokenizer = None
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                   + ([decoders.Strip(" ", 1, 0)] if style == "llama" else []))
    tk.post_processor = processors.TemplateProcessing(single=f"{toks[bos]} $A", pair=f"{toks[bos]} $A {toks[bos]} $B",
                                                      special_tokens=[(toks[bos], bos)])
    tk.save(str(out / "tokenizer.json"))
    dec = {str(i): {"content": toks[i], "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                    "special": True} for i in (unk, bos, eos)}
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False, **specials,
           "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 2048,
           "added_tokens_decoder": dec}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, ensure_ascii=False), encoding="utf-8")


# ------------------------------------------------------------------------------------------- models
def custom_init(model, seed: int, qk_gain: float = 1.5, head_gain: float = 2.0, router_gain: float = 2.0) -> None:
    """The shared fixtures' recipe (logits of order one): matrices ~ N(0, g / sqrt(fan_in)) (g = 1.5 for q/k
    projections, 2 for the head and routers, 1 otherwise), embeddings N(0, 1) (tied: N(0, 2 / sqrt(hidden))),
    norm weights 1 + N(0, 0.1) (Gemma-style norms, stored as w with x * (1 + w): N(0, 0.1)), biases N(0, 0.3)."""
    import torch

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    plus_one = type(model).__name__.startswith("Gemma")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_((0.0 if plus_one else 1.0) + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                std = head_gain / math.sqrt(p.shape[-1]) if tied else 1.0
                p.copy_(std * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                gain = 1.0
                if any(k in name for k in ("q_proj", "k_proj", "qkv_proj")):
                    gain = qk_gain
                if name.startswith("lm_head"):
                    gain = head_gain
                if name.endswith("mlp.gate.weight") or name.endswith("shared_expert_gate.weight"):
                    gain = router_gain
                p.copy_(gain / math.sqrt(p.shape[-1]) * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.numel()))


def build_hf(name: str, out: Path):
    import torch
    import transformers

    sp = SPECS[name]
    cfg = getattr(transformers, f"{sp['cls']}Config")(**sp["cfg"], torch_dtype="float32")
    torch.manual_seed(sp["seed"])
    model = getattr(transformers, f"{sp['cls']}ForCausalLM")(cfg).eval()
    model.set_attn_implementation("eager")  # plain softmax attention (Gemma 2's soft-capping needs it)
    custom_init(model, sp["seed"], router_gain=sp.get("router_gain", 2.0))
    model.save_pretrained(str(out), safe_serialization=True)
    if sp["tok"].startswith("bpe-"):
        bpe_tokenizer_dir(sp["tok"], out)
    else:
        spm_tokenizer_dir(sp["tok"], out, sp["spm_style"])
    return model


# ------------------------------------------------------------------------------------------- conversion
CONVERT_WRAPPER = r'''
import os, runpy, sys
src = os.environ["LCPP_CONVERT_SRC"]
sys.path.insert(0, src)
sys.path.insert(1, os.path.join(src, "gguf-py"))
import conversion.base as base
_orig = base.TextModel.get_vocab_base_pre
def _pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:  # a newly built vocabulary's hash is unknown to the converter
        return os.environ["FORCE_TOKPRE"]
base.TextModel.get_vocab_base_pre = _pre
sys.argv[0] = os.path.join(src, "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def convert(hf_dir: Path, out: Path, outtype: str, src: str, pre: str, model_name: str | None = None) -> None:
    """llama.cpp's converter, unmodified but for the pre-tokenizer name of a vocabulary it cannot identify."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CONVERT_WRAPPER)
    env = dict(os.environ, LCPP_CONVERT_SRC=src, FORCE_TOKPRE=pre)
    name = ["--model-name", model_name] if model_name else []
    subprocess.run([sys.executable, f.name, str(hf_dir), "--outtype", outtype, "--outfile", str(out), *name],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    os.unlink(f.name)


def dequantized_copy(model, src: str):
    """The model with every weight the converter stores as Q8_0 (>= 2-D, rows a multiple of 32, not a router)
    quantized and dequantized by gguf-py: the weights the q8_0 GGUF holds. Blocks never cross a row, so the
    converter's splitting/stacking of rows does not change them."""
    import copy

    import torch
    sys.path.insert(0, os.path.join(src, "gguf-py"))
    from gguf import GGMLQuantizationType, quants

    dq = copy.deepcopy(model)
    n = 0
    with torch.no_grad():
        for name, p in dq.named_parameters():
            if p.dim() < 2 or p.shape[-1] % 32 or name.endswith("mlp.gate.weight") or "shared_expert_gate" in name:
                continue
            a = p.detach().numpy().astype(np.float32)
            q = quants.quantize(a, GGMLQuantizationType.Q8_0)
            p.copy_(torch.from_numpy(quants.dequantize(q, GGMLQuantizationType.Q8_0).reshape(a.shape)))
            n += 1
    return dq, n


# ------------------------------------------------------------------------------------------- references
def hf_logits(model, ids: list[int]) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def greedy(model, ids: list[int]) -> tuple[list[int], list[float]]:
    """N_GEN greedy tokens (full forward each step: no cache involved) and each step's top-1 minus top-2 gap."""
    out, gaps, cur = [], [], list(ids)
    for _ in range(N_GEN):
        row = hf_logits(model, cur)[-1]
        top2 = np.sort(row)[-2:]
        out.append(int(np.argmax(row)))
        gaps.append(float(top2[1] - top2[0]))
        cur.append(out[-1])
    return out, gaps


def lse(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return (np.log(np.exp(x - m).sum(-1, keepdims=True)) + m)[..., 0]


LCPP_SCRIPT = r'''
import sys, json, numpy as np
from llama_cpp import Llama
path, ids_file, out = sys.argv[1:4]
prompts = json.load(open(ids_file))
m = Llama(model_path=path, n_ctx=256, n_batch=256, logits_all=True, n_threads=2, verbose=False,
          type_k=0, type_v=0, flash_attn=False)
res = {}
for i, ids in enumerate(prompts):
    m.reset()
    m.eval(ids)
    res[f"p{i}"] = np.array(m.scores[:len(ids)], dtype=np.float32)
np.savez(out, **res)
'''


def lcpp_logits(gguf: Path, prompts: list[list[int]], python: str) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "lcpp.py").write_text(LCPP_SCRIPT)
        (Path(d) / "ids.json").write_text(json.dumps(prompts))
        subprocess.run([python, str(Path(d) / "lcpp.py"), str(gguf), str(Path(d) / "ids.json"),
                        str(Path(d) / "out.npz")], check=True)
        z = np.load(Path(d) / "out.npz")
        return [z[f"p{i}"] for i in range(len(prompts))]


def write_npz(path: Path, gguf: Path, src: str, model, prompts: list[list[int]], lcpp: list[np.ndarray],
              versions: dict, extra: list[list[int]] | None = None, lcpp_extra: list[np.ndarray] | None = None) -> dict:
    """The compact references of `model` (source name `src`) and llama.cpp's agreement with them; with `extra`
    prompts (MoE models), their compact references and llama.cpp's agreement over them too."""
    rng = np.random.default_rng(12345)
    V = model.config.vocab_size
    sample = np.unique(np.concatenate([[0, 1, 2, V - 1], rng.choice(V, 60, replace=False)]))[:64].astype(np.int32)
    out: dict = {"sample_ids": sample}
    d_max, d_sum, d_n, agree = 0.0, 0.0, 0, []
    for i, ids in enumerate(prompts):
        lg = hf_logits(model, ids)
        top = np.argsort(-lg, axis=-1, kind="stable")[:, :32]
        out[f"token_ids_p{i}"] = np.array(ids, np.int32)
        out[f"{src}_top32_ids_p{i}"] = top.astype(np.int32)
        out[f"{src}_top32_logits_p{i}"] = np.take_along_axis(lg, top, -1)
        out[f"{src}_sample_logits_p{i}"] = lg[:, sample]
        out[f"{src}_logsumexp_p{i}"] = lse(lg).astype(np.float32)
        out[f"{src}_last_logits_p{i}"] = lg[-1]
        gen, gaps = greedy(model, ids)
        out[f"{src}_gen_ids_p{i}"] = np.array(gen, np.int32)
        out[f"{src}_gen_top2_gap_p{i}"] = np.array(gaps, np.float32)
        d = np.abs(lcpp[i] - lg)
        d_max, d_sum, d_n = max(d_max, float(d.max())), d_sum + float(d.sum(dtype=np.float64)), d_n + d.size
        agree.append(float((lcpp[i].argmax(-1) == lg.argmax(-1)).mean()))
    raw = gguf.read_bytes()
    meta = {"file": gguf.name, "sha256": hashlib.sha256(raw).hexdigest(), "reference": src,
            f"lcpp_vs_{src}_max_abs": d_max, f"lcpp_vs_{src}_mean_abs": d_sum / d_n,
            f"lcpp_vs_{src}_min_argmax_agree": min(agree), "versions": versions,
            "n_tokens": [len(p) for p in prompts]}
    if extra:  # the extra prompts: pinning data for our reference backend and llama.cpp's distance over them
        lgs = [hf_logits(model, ids) for ids in extra]
        top = [np.argsort(-lg, axis=-1, kind="stable")[:, :8] for lg in lgs]
        out["extra_ids"] = np.array(extra, np.int32)
        out[f"{src}_extra_top8_ids"] = np.array(top, np.int32)
        out[f"{src}_extra_top8_logits"] = np.array([np.take_along_axis(lg, t, -1) for lg, t in zip(lgs, top)])
        out[f"{src}_extra_logsumexp"] = np.array([lse(lg) for lg in lgs], np.float32)
        d = np.abs(np.array(lcpp_extra, np.float64) - np.array(lgs, np.float64))
        meta.update({f"lcpp_vs_{src}_extra_max_abs": float(d.max()), f"lcpp_vs_{src}_extra_mean_abs": float(d.mean()),
                     "n_extra_tokens": int(d.shape[0] * d.shape[1])})
    out["meta_json"] = np.array(json.dumps(meta))
    np.savez_compressed(path, **out)
    return meta


def extra_prompts(tok, seed: int, n: int, length: int = 64) -> list[list[int]]:
    """n seeded prompts of BOS + random ordinary tokens. A mixture of experts' whole-vocabulary mean |Δ| over the four
    prompts alone rests on a handful of routing near-ties (an expert pair within the activations' rounding noise,
    then every later position through attention), so MoE fixtures measure llama.cpp's distance, and the kernel
    backends', over these too."""
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    normal = np.array(sorted(set(tok.get_vocab().values()) - special))
    rng = np.random.default_rng(seed)
    return [[tok.bos_token_id] + [int(t) for t in rng.choice(normal, length - 1)] for _ in range(n)]


def tokenizer_parity(hf_dir: Path, tok: str, out: Path) -> int:
    """HF ids (BOS added, special strings parsed) of the shared parity texts of vocabulary `tok`; returns how
    many differ from llama.cpp's (`ids_bos` of the parity file)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    cases = json.loads((DATA / f"tokenizer-{tok}.json").read_text(encoding="utf-8"))["cases"]
    rows = [{"text": c["text"], "hf_ids": hf.encode(c["text"])} for c in cases]
    out.write_text(json.dumps({"tokenizer": tok, "cases": rows}, ensure_ascii=False), encoding="utf-8")
    return sum(r["hf_ids"] != c["ids_bos"] for r, c in zip(rows, cases))


def smollm_parity(out: Path) -> None:
    """HF ids of the shared parity texts for SmolLM's pre-tokenizer (each digit alone, then GPT-2's byte-level
    split; no normaliser: llama.cpp's "smollm" / "refact" / "starcoder"), over the bpe-qwen2-4k vocabulary."""
    from tokenizers import Tokenizer, pre_tokenizers

    with tempfile.TemporaryDirectory() as tmp:
        bpe_tokenizer_dir("bpe-qwen2-4k", Path(tmp))
        tk = Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    cases = json.loads((DATA / "tokenizer-bpe-qwen2-4k.json").read_text(encoding="utf-8"))["cases"]
    rows = [{"text": c["text"], "hf_ids": tk.encode(c["text"]).ids} for c in cases]  # BOS by the post-processor
    out.write_text(json.dumps({"tokenizer": "bpe-qwen2-4k", "pre": "smollm", "cases": rows}, ensure_ascii=False),
                   encoding="utf-8")


def make(name: str, src: str, lcpp_python: str, work: Path) -> None:
    import tokenizers
    import torch
    import transformers

    torch.set_num_threads(2)
    sp = SPECS[name]
    hf_dir = work / name
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    model = build_hf(name, hf_dir)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__, "seed": sp["seed"], "llama_cpp_convert": os.path.abspath(src)}
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    prompts = [tok.encode(p) for p in PROMPTS]
    extra = extra_prompts(tok, sp["seed"], sp.get("extra_prompts", 0))
    n_bad = tokenizer_parity(hf_dir, sp["tok"], DATA / f"{name}.hf_tok.json")
    print(f"{name}: HF tokenizer vs llama.cpp ids on the parity texts: {n_bad} differ", file=sys.stderr)
    for outtype, ref_src in (("f32", "hf"), ("q8_0", "hfdq")):
        gguf = DATA / f"{name}-{outtype}.gguf"
        convert(hf_dir, gguf, outtype, src, sp["pre"], sp.get("model_name"))
        ref_model = model
        if ref_src == "hfdq":
            ref_model, n_q = dequantized_copy(model, src)
            print(f"{name}: {n_q} tensors quantized for hfdq", file=sys.stderr)
        lc = lcpp_logits(gguf, prompts + extra, lcpp_python)
        meta = write_npz(DATA / f"{name}-{outtype}.npz", gguf, ref_src, ref_model, prompts, lc[:len(prompts)],
                         versions, extra, lc[len(prompts):])
        print(f"{gguf.name}: {gguf.stat().st_size} bytes; " + ", ".join(
            f"{k} {v:.3g}" for k, v in meta.items() if k.startswith("lcpp")), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=[*SPECS, "smollm-pre"])
    ap.add_argument("--convert-src", required=True, help="folder with convert_hf_to_gguf.py, conversion/, gguf-py/")
    ap.add_argument("--lcpp-python", required=True, help="a python with llama-cpp-python (llama.cpp's logits)")
    ap.add_argument("--work", default=None, help="folder for the HF checkpoints (default: a temporary one)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="arch-fixtures-"))
    for n in a.names:
        if n == "smollm-pre":
            smollm_parity(DATA / "smollm-pre.hf_tok.json")
        else:
            make(n, a.convert_src, a.lcpp_python, work)


if __name__ == "__main__":
    main()
