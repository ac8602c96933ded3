"""Mixture-of-experts FFN: DeepSeek routing (softmax or sigmoid, selection bias, expert groups) and expert dispatch.

Routing is float32 numpy; every matrix product (router, experts) goes through `backend.matmul`. Experts are
3-D GGUF tensors `[n_embd, n_ff, n_expert]`; `TensorView.matrix(e)` is expert e's 2-D weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilellm.backend import Backend
from tilellm.backend.ops import silu
from tilellm.quant import TensorView

from .layers import softmax

GATING_SOFTMAX = 1
GATING_SIGMOID = 2


@dataclass(frozen=True)
class RouterConfig:
    """How a token picks its experts (llama.cpp's deepseek2 keys)."""

    n_expert: int
    n_used: int  # expert_used_count (top-k)
    gating: int = GATING_SOFTMAX  # expert_gating_func
    n_group: int = 1  # expert_group_count
    n_group_used: int = 1  # expert_group_used_count
    norm: bool = False  # expert_weights_norm: divide the chosen weights by their sum
    scale: float = 1.0  # expert_weights_scale

    def __post_init__(self) -> None:
        if not 1 <= self.n_used <= self.n_expert:
            raise ValueError(f"expert_used_count {self.n_used} must be in 1..{self.n_expert}")
        if self.gating not in (GATING_SOFTMAX, GATING_SIGMOID):
            raise ValueError(f"unknown expert gating function {self.gating}")
        if self.n_group < 1 or self.n_expert % self.n_group or not 1 <= self.n_group_used <= self.n_group:
            raise ValueError(f"bad expert groups: {self.n_group_used} of {self.n_group} over {self.n_expert} experts")
        per_group = self.n_expert // self.n_group
        if self.n_group > 1 and (per_group < 2 or self.n_group_used * per_group < self.n_used):
            raise ValueError("expert groups too small for the group score (top 2) or for expert_used_count")


def route(logits: np.ndarray, cfg: RouterConfig, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Router logits [T, n_expert] -> (expert ids [T, k] int64, weights [T, k] float32).

    Scores are softmax or sigmoid of the logits. `bias` (exp_probs_b) is added for *selection only*: groups and
    experts are chosen on biased scores, the weights are the unbiased scores of the chosen experts.
    """
    T, E = logits.shape
    lg = logits.astype(np.float32, copy=False)
    if cfg.gating == GATING_SOFTMAX:
        probs = softmax(lg, axis=-1)
    else:
        with np.errstate(over="ignore"):  # exp overflow -> score 0, as it should
            probs = np.float32(1) / (np.float32(1) + np.exp(-lg))
    sel = probs + bias.astype(np.float32) if bias is not None else probs.copy()
    if cfg.n_group > 1 and cfg.n_group_used < cfg.n_group:
        g = sel.reshape(T, cfg.n_group, E // cfg.n_group)
        top2 = -np.sort(-g, axis=-1)[..., :2]  # a group's score: its two best biased scores
        gscore = top2.sum(-1)  # [T, n_group]
        drop = np.argsort(-gscore, axis=-1, kind="stable")[:, cfg.n_group_used:]
        gmask = np.zeros((T, cfg.n_group), dtype=bool)
        np.put_along_axis(gmask, drop, True, axis=-1)
        sel[np.repeat(gmask, E // cfg.n_group, axis=-1)] = -np.inf
    ids = np.argsort(-sel, axis=-1, kind="stable")[:, :cfg.n_used]
    w = np.take_along_axis(probs, ids, axis=-1)
    if cfg.norm:
        w = w / np.sum(w, axis=-1, keepdims=True)
    w = (w * np.float32(cfg.scale)).astype(np.float32)
    return ids.astype(np.int64), w


def swiglu(backend: Backend, x: np.ndarray, gate: TensorView, up: TensorView, down: TensorView) -> np.ndarray:
    """down(silu(gate x) * up x), with x prepared once for gate and up."""
    xp = backend.prepare(x, gate.type)
    return backend.matmul(down, silu(backend.matmul(gate, xp)) * backend.matmul(up, xp))


def moe_ffn(backend: Backend, x: np.ndarray, ids: np.ndarray, weights: np.ndarray,
            gate_exps: TensorView, up_exps: TensorView, down_exps: TensorView) -> np.ndarray:
    """Σ_j weights[t, j] * expert_{ids[t, j]}(x[t]) for every token t, [T, n_embd].

    Tokens are grouped by expert so each expert runs once on its batch of tokens; experts nobody picked
    are skipped. A token picks an expert at most once, so the scatter-add below never hits a row twice.
    """
    T = x.shape[0]
    out = np.zeros((T, down_exps.shape[1]), dtype=np.float32)
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")  # (token, slot) pairs sorted by expert
    experts, starts = np.unique(flat[order], return_index=True)
    bounds = np.append(starts, flat.size)
    k = ids.shape[1]
    for j, e in enumerate(experts):
        pairs = order[bounds[j]:bounds[j + 1]]
        tok = pairs // k
        y = swiglu(backend, np.ascontiguousarray(x[tok]), gate_exps.matrix(int(e)), up_exps.matrix(int(e)),
                   down_exps.matrix(int(e)))
        out[tok] += y * weights.reshape(-1)[pairs][:, None]
    return out
