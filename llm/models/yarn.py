"""YaRN rope scaling as llama.cpp applies it to deepseek2 files (`rope.scaling.type == "yarn"`).

The maths (YaRN, Peng et al. 2023): frequency pair i of n_rot/2 has wavelength 2*pi/theta_i. Pairs that turn
many times within the original context (fast, i below `low`) keep their frequency ("extrapolation"); pairs
that turn less than about once (slow, i above `high`) are interpolated (frequency / factor); in between a
linear ramp mixes the two. The correction dims are where a pair makes `beta` turns over the original
context: d(beta) = n_rot * ln(n_ctx_orig / (2*pi*beta)) / (2 ln base); low = floor(d(beta_fast)),
high = ceil(d(beta_slow)), clamped to [0, n_rot - 1].

Magnitude: llama.cpp's deepseek2 graph scales the attention logits by mscale^2 with
mscale = attn_factor * (1 + yarn_log_multiplier * ln(factor)), and cancels YaRN's own cos/sin magnitude
(1 + 0.1 ln factor) by passing its inverse as the rope attention factor — so cos/sin stay unscaled here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from tilellm.quant.errors import GGUFError, UnsupportedError

from ..gguf.hparams import dim
from ..gguf.metadata import float_in, str_of


@dataclass(frozen=True)
class YarnParams:
    """The YaRN settings read from a file (defaults: llama.cpp's)."""

    factor: float
    n_ctx_orig: int
    log_multiplier: float = 0.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    ext_factor: float = 1.0
    attn_factor: float = 1.0

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any], arch: str) -> "YarnParams | None":
        """None when the file asks for no scaling; UnsupportedError for a scaling type other than yarn."""
        p = f"{arch}.rope.scaling."
        kind = str_of(md, p + "type", "none")
        factor = float_in(md, p + "factor", 0.0, low=0.0)
        if kind in ("none", "") or (kind == "linear" and factor in (0.0, 1.0)):
            return None
        if kind != "yarn":
            raise UnsupportedError(f"rope scaling {kind!r} is not supported for {arch!r} (only 'yarn')")
        if not factor > 0:
            raise GGUFError(f"metadata {p}factor must be > 0 for yarn, got {factor}")
        if p + "original_context_length" not in md:
            raise GGUFError(f"metadata {p}original_context_length is required for yarn")
        # betas are turn counts over the original context: 0 would divide by zero in corr_dims
        return cls(factor=factor, n_ctx_orig=dim(md, p + "original_context_length"),
                   log_multiplier=float_in(md, p + "yarn_log_multiplier", 0.0),
                   beta_fast=float_in(md, p + "yarn_beta_fast", 32.0, low=0.0, low_open=True),
                   beta_slow=float_in(md, p + "yarn_beta_slow", 1.0, low=0.0, low_open=True),
                   ext_factor=float_in(md, p + "yarn_ext_factor", 1.0),
                   attn_factor=float_in(md, p + "yarn_attn_factor", 1.0))


def corr_dims(n_rot: int, base: float, n_ctx_orig: int, beta_fast: float, beta_slow: float) -> tuple[float, float]:
    """(low, high) pair indices between which extrapolation ramps over to interpolation."""
    def at(beta: float) -> float:
        return n_rot * math.log(n_ctx_orig / (beta * 2 * math.pi)) / (2 * math.log(base))

    return max(0.0, math.floor(at(beta_fast))), min(n_rot - 1.0, math.ceil(at(beta_slow)))


def yarn_inv_freq(n_rot: int, base: float, y: YarnParams) -> np.ndarray:
    """Per-pair angular frequencies [n_rot/2] (float64) after YaRN scaling."""
    i = np.arange(n_rot // 2, dtype=np.float64)
    extrap = base ** (-2.0 * i / n_rot)
    interp = extrap / y.factor
    low, high = corr_dims(n_rot, base, y.n_ctx_orig, y.beta_fast, y.beta_slow)
    # 1 for fast pairs (keep), 0 for slow pairs (interpolate); max() avoids 0/0 when low == high
    keep = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)
    keep = keep * y.ext_factor
    return interp * (1.0 - keep) + extrap * keep


def yarn_mscale(y: YarnParams | None) -> float:
    """The factor whose square multiplies deepseek2's softmax scale (1 without scaling)."""
    if y is None:
        return 1.0
    return y.attn_factor * (1.0 + y.log_multiplier * math.log(y.factor))
