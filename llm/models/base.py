"""What every decoder model shares: context bookkeeping, token validation, batching, tensor lookup, the head."""
from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence, overload

import numpy as np

from tilellm.backend import Backend
from tilellm.backend.ops import rms_norm
from tilellm.quant import GGMLType, TensorView
from tilellm.quant.errors import ContextOverflowError, GGUFError, NumericalError, UnsupportedError


class Decoder(Protocol):
    """What `tilellm.Model` needs of a forward pass (every `DecoderModel`, or a registered factory's result)."""

    n_ctx: int
    n_past: int

    @property
    def n_vocab(self) -> int: ...

    def eval(self, tokens: Sequence[int] | np.ndarray, logits_all: bool = False) -> np.ndarray: ...

    def reset(self) -> None: ...


def vector(t: TensorView) -> np.ndarray:
    """A 1-D parameter (norm weight, bias) as float32 — a view when it is stored as F32."""
    if t.type == GGMLType.F32:
        return t.data.view(np.float32).reshape(-1)
    return t.dequantize().reshape(-1)


NUMERICS = ("default", "ggml")


def check_numerics(numerics: str) -> str:
    """`numerics` if it is one of NUMERICS, else ValueError."""
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be 'default' or 'ggml', got {numerics!r}")
    return numerics


class DecoderModel:
    """What every decoder shares: context/batch bookkeeping, token validation, batching, tensor lookup, the head.

    A subclass sets `file`, `backend`, `hparams` (with `arch`, `n_vocab`, `n_ctx_train`, `rms_eps`) and
    `numerics`, calls `_init_context`, loads `out_norm` / `output`, and implements `_forward(ids) -> hidden
    [T, n_embd]`, which must advance `n_past`. `numerics` "ggml" takes llama.cpp's rounding where it differs
    (fp16 K/V, table GELU); the backend given must then round activations alike (`backend.get(act_rounding=)`).
    """

    file: Any
    backend: Backend
    numerics: str
    hparams: Any
    out_norm: np.ndarray
    output: TensorView
    n_ctx: int
    n_batch: int
    n_past: int

    def _init_context(self, n_ctx: int | None, n_batch: int) -> None:
        """Validate and store n_ctx (None: min(trained, 4096); 0: trained) and n_batch."""
        n_train = self.hparams.n_ctx_train
        if n_ctx is None:
            n_ctx = min(n_train, 4096)
        elif n_ctx == 0:
            n_ctx = n_train
        if int(n_ctx) < 1:
            raise ValueError(f"n_ctx must be >= 1 (or 0 for the model's {n_train}), got {n_ctx}")
        if int(n_batch) < 1:
            raise ValueError(f"n_batch must be >= 1, got {n_batch}")
        self.n_ctx, self.n_batch = int(n_ctx), int(n_batch)
        self.n_past = 0

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _vocab_size(file: Any) -> int:
        emb = file.tensors.get("token_embd.weight")
        if emb is None:
            raise GGUFError("missing required tensor 'token_embd.weight'")
        return emb.n_rows

    @overload
    def _tensor(self, name: str, shape: Sequence[int] | None, optional: Literal[False] = False) -> TensorView: ...

    @overload
    def _tensor(self, name: str, shape: Sequence[int] | None, optional: bool) -> TensorView | None: ...

    def _tensor(self, name: str, shape: Sequence[int] | None, optional: bool = False) -> TensorView | None:
        """Tensor `name` of the file, checked to have `shape` (GGUF order); None if absent and `optional`."""
        t = self.file.tensors.get(name)
        if t is None:
            if optional:
                return None
            raise GGUFError(f"missing required tensor {name!r} for architecture {self.hparams.arch!r}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise GGUFError(f"tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}")
        return t

    @overload
    def _linear(self, name: str, k: int, m: int, optional: Literal[False] = False) -> TensorView: ...

    @overload
    def _linear(self, name: str, k: int, m: int, optional: bool) -> TensorView | None: ...

    def _linear(self, name: str, k: int, m: int, optional: bool = False) -> TensorView | None:
        """A [m, k] weight matrix the backend must be able to multiply."""
        t = self._tensor(name, (k, m), optional)
        if t is not None and not self.backend.supports(t.type):
            raise UnsupportedError(f"tensor {name!r} has type {t.type.name}, which backend {self.backend.name!r} "
                                   f"does not support")
        return t

    # ------------------------------------------------------------------ running
    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    def reset(self) -> None:
        """Forget the context (the KV cache is overwritten from position 0)."""
        self.n_past = 0

    def truncate(self, n_keep: int) -> None:
        """Keep the first `n_keep` positions of the context and forget the rest (their KV rows are overwritten by
        the next eval): how a new prompt reuses the cached prefix it shares with the previous one."""
        if not 0 <= int(n_keep) <= self.n_past:
            raise ValueError(f"truncate() needs 0 <= n_keep <= n_past ({self.n_past}), got {n_keep}")
        self.n_past = int(n_keep)

    def eval_hidden(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Append `tokens` to the context; their final-normed hidden states `[T, n_embd]` (what the output head
        multiplies: the embeddings llama.cpp pools)."""
        ids = self._checked_ids(tokens)
        hs = [self._forward(ids[s:s + self.n_batch]) for s in range(0, ids.size, self.n_batch)]
        out = rms_norm(np.concatenate(hs, axis=0), self.out_norm, self.hparams.rms_eps)
        if not np.isfinite(out).all():
            raise NumericalError("the forward pass produced non-finite hidden states; call reset() before "
                                 "evaluating again")
        return np.asarray(out, dtype=np.float32)

    def _checked_ids(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """`tokens` as int64 ids, checked against the vocabulary and the room left in the context."""
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("eval() needs a non-empty 1-D sequence of token ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        bad = ids[(ids < 0) | (ids >= self.n_vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary of {self.n_vocab}")
        if self.n_past + ids.size > self.n_ctx:
            raise ContextOverflowError(
                f"Requested tokens ({self.n_past + ids.size}) exceed context window of {self.n_ctx}")
        check = getattr(self.file, "check_unchanged", None)
        if check is not None:
            check()
        return ids

    def eval(self, tokens: Sequence[int] | np.ndarray, logits_all: bool = False) -> np.ndarray:
        """Append `tokens` to the context; logits of the last position `[n_vocab]` or of every new one."""
        ids = self._checked_ids(tokens)
        outs = []
        for s in range(0, ids.size, self.n_batch):
            chunk = ids[s:s + self.n_batch]
            last = s + self.n_batch >= ids.size
            h = self._forward(chunk)
            if logits_all:
                outs.append(self._head(h))
            elif last:
                outs.append(self._head(h[-1:])[0])
        out = np.concatenate(outs, axis=0) if logits_all else outs[0]
        if not np.isfinite(out).all():  # never hand NaN/inf on as if it were an answer
            where = getattr(self.file, "path", "the model file")
            raise NumericalError(f"the forward pass produced non-finite logits (weights in {where} may be corrupt); "
                                 "call reset() before evaluating again")
        return out

    def _attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, n_past: int, scale: float,
                   window: int | None = None) -> np.ndarray:
        """Causal GQA attention (optionally sliding-window) by the backend. k/v hold positions 0..n_past+T-1
        relative to their first row."""
        return self.backend.attention(q, k, v, n_past, scale, window=window)

    def _f16_if_ggml(self, x: np.ndarray) -> np.ndarray:
        """numerics="ggml": values rounded to fp16 where llama.cpp's default f16 KV cache rounds them (k and v
        as stored, q as converted for the f16 K product); otherwise x unchanged."""
        return x.astype(np.float16).astype(np.float32) if self.numerics == "ggml" else x

    def _head(self, h: np.ndarray) -> np.ndarray:
        return self.backend.matmul(self.output, self.backend.prepare_rms_norm(h, self.out_norm, self.hparams.rms_eps,
                                                                              self.output.type))

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        """Run the new tokens `ids` through the blocks; hidden states [T, n_embd]; advances n_past."""
        raise NotImplementedError
