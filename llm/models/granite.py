"""granite (IBM Granite 3.x dense): the LLaMA block with four scalars from the file.

`granite.embedding_scale` multiplies the input embeddings, `granite.residual_scale` each branch's output before
its residual add, `granite.attention.scale` replaces 1/sqrt(head_dim) as the softmax scale, and the logits are
divided by `granite.logit_scale` (llama.cpp reads the same keys; absent ones leave that step out). q/k are stored
permuted like llama's (adjacent-pair rope).
"""
from __future__ import annotations

import numpy as np

from ..gguf.metadata import float_in, pos_float
from .generic import GenericModel


class GraniteModel(GenericModel):
    """Granite 3.x dense decoder over the op-by-op LLaMA-shaped block."""

    rope_mode = "norm"
    qk_norm = False

    def _load_tensors(self) -> None:
        md, a = self.file.metadata, f"{self.hparams.arch}."
        self.embd_scale = float_in(md, a + "embedding_scale", 0.0, low=0.0) or 1.0
        self.residual_scale = float_in(md, a + "residual_scale", 0.0, low=0.0) or 1.0
        self.attn_scale = float_in(md, a + "attention.scale", 0.0, low=0.0) or None
        self.logit_scale = pos_float(md, a + "logit_scale", 1.0)
        super()._load_tensors()

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        h = self.tok_embd.rows(ids)
        return h * np.float32(self.embd_scale) if self.embd_scale != 1.0 else h

    def _head(self, h: np.ndarray) -> np.ndarray:
        out = super()._head(h)
        if self.logit_scale != 1.0:
            out /= np.float32(self.logit_scale)
        return out
