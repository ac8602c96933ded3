"""qwen2moe (Qwen1.5-MoE, Qwen2-57B-A14B) and qwen3moe (Qwen3-30B-A3B, 235B-A22B): the qwen2 / qwen3 block with a
mixture-of-experts FFN through `moe.py`.

Routing (llama.cpp's fixed choices for these two): softmax over the router logits (`ffn_gate_inp`, kept float32 by
the converter), the top `expert_used_count` experts; qwen3moe renormalises their weights to sum 1, qwen2moe does
not. Experts are the 3-D `ffn_{gate,up,down}_exps` tensors of `expert_feed_forward_length` rows (default: the
dense FFN length / experts used, llama.cpp's). qwen2moe adds a shared expert (`ffn_{gate,up,down}_shexp`, of
`expert_shared_feed_forward_length` rows, default the dense FFN length) scaled by sigmoid(`ffn_gate_inp_shexp` x).
Every MoE model here has experts in every layer (llama.cpp requires the router tensors of each).
"""
from __future__ import annotations

import numpy as np

from tilellm.backend import Backend
from tilellm.backend.ops import rms_norm
from tilellm.quant import TensorView
from tilellm.quant.errors import GGUFError, UnsupportedError

from ..gguf.hparams import dim
from .generic import GenericModel
from .moe import GATING_SOFTMAX, RouterConfig, moe_ffn, route, swiglu


class SharedExpert:
    """sigmoid(gate_inp x) * down(silu(gate x) * up x): qwen2moe's always-on expert with its scalar gate."""

    def __init__(self, gate_inp: TensorView, gate: TensorView, up: TensorView, down: TensorView) -> None:
        self.gate_inp, self.gate, self.up, self.down = gate_inp, gate, up, down

    def __call__(self, be: Backend, x: np.ndarray) -> np.ndarray:
        g = be.matmul(self.gate_inp, x)  # [T, 1]
        with np.errstate(over="ignore"):  # exp overflow: a gate of 0, as it should
            s = np.float32(1) / (np.float32(1) + np.exp(-g))
        return swiglu(be, x, self.gate, self.up, self.down) * s


class MoEFFN:
    """Σ of the routed experts' SwiGLU of x = rms_norm(h), weighted by the router, plus the shared expert if any."""

    def __init__(self, router: TensorView, cfg: RouterConfig, gate: TensorView, up: TensorView,
                 down: TensorView, shared: SharedExpert | None = None) -> None:
        self.router, self.cfg, self.gate, self.up, self.down = router, cfg, gate, up, down
        self.shared = shared

    def __call__(self, be: Backend, h: np.ndarray, norm: np.ndarray, eps: float) -> np.ndarray:
        x = rms_norm(h, norm, eps)
        ids, w = route(be.matmul(self.router, x), self.cfg)
        y = moe_ffn(be, x, ids, w, self.gate, self.up, self.down)
        if self.shared is not None:
            y += self.shared(be, x)
        return y


class _QwenMoeModel(GenericModel):
    """The MoE FFN of both architectures; subclasses say whether the top-k weights are renormalised and whether
    the shared expert is there."""

    norm_topk = True
    shared_expert = False

    def _ffn_of(self, i: int) -> MoEFFN:
        hp, md, d, p = self.hparams, self.file.metadata, self.hparams.n_embd, f"blk.{i}."
        a = f"{hp.arch}."
        n_exp, n_used = dim(md, a + "expert_count"), dim(md, a + "expert_used_count")
        if n_used > n_exp:
            raise GGUFError(f"metadata {a}expert_used_count = {n_used} exceeds {a}expert_count = {n_exp}")
        ff = dim(md, a + "expert_feed_forward_length", max(hp.n_ff // n_used, 1))
        cfg = RouterConfig(n_expert=n_exp, n_used=n_used, gating=GATING_SOFTMAX, norm=self.norm_topk)
        router = self._linear(p + "ffn_gate_inp.weight", d, n_exp)
        gate, up, down = (self._supported(self._tensor(p + f"ffn_{n}_exps.weight", s)) for n, s in
                          (("gate", (d, ff, n_exp)), ("up", (d, ff, n_exp)), ("down", (ff, d, n_exp))))
        shared = None
        if self.shared_expert:
            fs = dim(md, a + "expert_shared_feed_forward_length", hp.n_ff)
            name = p + "ffn_gate_inp_shexp.weight"
            gi = self._tensor(name, None)
            if tuple(gi.shape) not in ((d,), (d, 1)):  # llama.cpp's {n_embd}; the converter writes [n_embd, 1]
                raise GGUFError(f"tensor {name!r} has shape {list(gi.shape)}, expected [{d}] or [{d}, 1]")
            shared = SharedExpert(self._supported(gi), self._linear(p + "ffn_gate_shexp.weight", d, fs),
                                  self._linear(p + "ffn_up_shexp.weight", d, fs),
                                  self._linear(p + "ffn_down_shexp.weight", fs, d))
        return MoEFFN(router, cfg, gate, up, down, shared)

    def _supported(self, t: TensorView) -> TensorView:
        """t, if the backend multiplies its type (the 3-D expert tensors and the shared gate skip `_linear`)."""
        if not self.backend.supports(t.type):
            raise UnsupportedError(f"tensor {t.name!r} has type {t.type.name}, which backend {self.backend.name!r} "
                                   f"does not support")
        return t


class Qwen3MoeModel(_QwenMoeModel):
    """qwen3moe: qwen3's per-head q/k norms, softmax top-k renormalised, no shared expert."""

    rope_mode = "neox"
    qk_norm = True
    norm_topk = True
    shared_expert = False


class Qwen2MoeModel(_QwenMoeModel):
    """qwen2moe: qwen2's q/k/v biases, softmax top-k (not renormalised), a sigmoid-gated shared expert."""

    rope_mode = "neox"
    qk_norm = False
    norm_topk = False
    shared_expert = True
