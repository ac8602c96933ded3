"""What every decoder model shares: context bookkeeping, token validation, batching, tensor lookup, the head."""
from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence, overload

import numpy as np

from tilellm.backend import Backend, LayerPlan, LayerProgram
from tilellm.backend.ops import rms_norm
from tilellm.quant import GGMLType, TensorView
from tilellm.quant.errors import ContextOverflowError, GGUFError, NumericalError, UnsupportedError
from tilellm.quant.kv import DEFAULT_KV_TYPE, kv_name, kv_store, kv_type, kv_zeros

from .kvshift import RopedKeys, check_shift, shift_arrays


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
    tok_embd: TensorView
    rope: Any
    n_ctx: int
    n_batch: int
    n_past: int
    type_k: GGMLType = DEFAULT_KV_TYPE
    type_v: GGMLType = DEFAULT_KV_TYPE

    def _bind(self, file: Any, backend: Backend, numerics: str, type_k: Any, type_v: Any) -> None:
        """What every decoder's constructor stores first: the file, the backend, the numerics and the KV types."""
        self.file = file
        self.backend = backend
        self.numerics = check_numerics(numerics)
        self._init_kv_types(type_k, type_v)

    def _init_kv_types(self, type_k: Any, type_v: Any) -> None:
        """Validate and store the KV cache types (names "f32" / "f16" / "bf16" / "q8_0" or ggml type ids)."""
        self.type_k, self.type_v = kv_type(type_k, "type_k"), kv_type(type_v, "type_v")

    def _kv_zeros(self, shape: tuple[int, ...], which: str) -> np.ndarray:
        """A zeroed cache of `shape` values of this model's K ("k") or V ("v") type."""
        return kv_zeros(shape, self.type_k if which == "k" else self.type_v)

    @staticmethod
    def _kv_put(dst: np.ndarray, x: np.ndarray) -> None:
        """Write float32 keys / values into a cache slice, rounded to its type."""
        kv_store(dst, x)

    def kv_sizes(self) -> dict[str, int]:
        """Bytes of this model's KV caches by name (their full n_ctx)."""
        return {name: int(a.nbytes) for name, a in self._cache_arrays().items()}

    def kv_summary(self) -> str:
        """One line on the KV cache: its types, bytes per token and in total."""
        from .memory import fmt_bytes

        sizes = self.kv_sizes()
        total = sum(sizes.values())
        parts = ", ".join(f"{name} {fmt_bytes(n)}" for name, n in sizes.items())
        return (f"KV cache: {self.n_ctx} positions, K {kv_name(self.type_k)}, V {kv_name(self.type_v)}: "
                f"{total / max(1, self.n_ctx) / 1024:.2f} KiB per token, {fmt_bytes(total)} in all ({parts})")
    ggml_f16_cache = False  # numerics="ggml" rounds the cached K and V to fp16 (so does a context shift then)

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

    def _load_embeddings(self) -> None:
        """token_embd, output_norm and the output head, which is the embedding matrix itself when tied."""
        d, n_vocab = self.hparams.n_embd, self.hparams.n_vocab
        self.tok_embd = self._tensor("token_embd.weight", (d, n_vocab))
        self.out_norm = vector(self._tensor("output_norm.weight", (d,)))
        self.output = self._linear("output.weight", d, n_vocab, optional=True) or self._linear(
            "token_embd.weight", d, n_vocab)

    def _attn_biases(self, prefix: str) -> dict[str, np.ndarray | None]:
        """Layer `prefix`'s optional q/k/v biases (Qwen2's), as "bq"/"bk"/"bv" -> vector or None."""
        hp = self.hparams
        q_dim, kv_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
        out: dict[str, np.ndarray | None] = {}
        for b, dim in (("bq", q_dim), ("bk", kv_dim), ("bv", kv_dim)):
            t = self._tensor(prefix + f"attn_{b[1]}.bias", (dim,), optional=True)
            out[b] = vector(t) if t is not None else None
        return out

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

    def shift_context(self, n_keep: int, n_discard: int) -> None:
        """llama.cpp's context shift: forget positions n_keep .. n_keep+n_discard-1 and move the later cached ones
        down by n_discard, their rope'd keys re-rotated by -n_discard positions with each layer's own rope
        (`_roped_keys`); the next token then goes at n_past - n_discard. ValueError unless n_keep >= 0,
        n_discard >= 1 and n_keep + n_discard <= n_past."""
        n_keep, n_discard = check_shift(n_keep, n_discard, self.n_past)
        arrays = self._cache_arrays()
        if not arrays:
            raise UnsupportedError(f"the {self.hparams.arch} model cannot shift its context (no KV cache arrays)")
        shift_arrays(arrays, self._roped_keys(), n_keep, n_discard, self.n_past,
                     round_f16=self.ggml_f16_cache and self.numerics == "ggml")
        self.n_past -= n_discard

    def _roped_keys(self) -> list[RopedKeys]:
        """Where `_cache_arrays` hold rope'd keys (what a context shift re-rotates)."""
        return []

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

    # ------------------------------------------------------------------ one-call decode (layer programs)
    def _embed(self, ids: np.ndarray) -> np.ndarray:
        """The token embeddings the first layer takes, float32 [T, n_embd]."""
        return np.asarray(self.tok_embd.rows(ids), dtype=np.float32)

    def _cache_arrays(self) -> dict[str, np.ndarray]:
        """This model's own KV caches by name, `[n_layer, n_ctx, ...]` each (the names of `_slot_arrays`)."""
        return {}

    def _layer_program(self, li: int, caches: dict[str, np.ndarray]) -> LayerProgram | None:
        """Layer li as a layer program over `caches` (name -> this layer's `[n_slots, n_ctx, ...]` array), or None:
        the layer has no one-call decode step."""
        return None

    def _layer_rope(self, li: int) -> Any:
        """The `Rope` of layer li (its angles are passed to each one-call step)."""
        return self.rope

    def _program_key(self) -> Any:
        """What the layer programs depend on besides the backend (re-planned when it changes)."""
        return None

    def _plans_over(self, arrays: dict[str, np.ndarray], slotted: bool,
                    store: dict[Any, Any]) -> list[LayerPlan] | None:
        """The backend's plans of every layer's program over `arrays` (`[n_slots, n_layer, ...]` when `slotted`, else
        the model's own `[n_layer, ...]`), made once and kept in `store`; None when the backend does not run a
        layer in one call, or numerics="ggml" (whose fp16 K/V rounding the programs lack)."""
        key = (self.backend, self._program_key())
        if key in store:
            return store[key]
        plans: list[LayerPlan] | None = None
        if self.numerics == "default" and arrays:
            plans = []
            for li in range(self.hparams.n_layer):
                caches = {name: (a[:, li] if slotted else a[li][None]) for name, a in arrays.items()}
                prog = self._layer_program(li, caches)
                plan = self.backend.plan_layer(prog) if prog is not None else None
                if plan is None:
                    plans = None
                    break
                plans.append(plan)
        store.clear()
        store[key] = plans
        return plans

    def _layer_plans(self) -> list[LayerPlan] | None:
        """Plans of every layer over the model's own caches (see `_plans_over`)."""
        store = self.__dict__.setdefault("_plans_store", {})
        return self._plans_over(self._cache_arrays(), False, store)

    def _decode_planned(self, plans: list[LayerPlan], h: np.ndarray, pos: np.ndarray,
                        slots: np.ndarray | None = None) -> np.ndarray:
        """Tokens h [n, n_embd] (each a sequence's next token: at pos[j] of cache slot slots[j]) through every
        layer, one backend call per layer."""
        h = np.ascontiguousarray(h, dtype=np.float32)
        pos = np.asarray(pos, dtype=np.int64)
        tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for li, plan in enumerate(plans):
            rope = self._layer_rope(li)
            cs = tables.get(id(rope))
            if cs is None:
                p0 = int(pos[0])
                cs = tables[id(rope)] = rope.span(p0, p0 + 1) if pos.size == 1 else rope.tables(pos)
            self.backend.decode_layer(plan, h, cs[0], cs[1], pos, slots)
        return h


# ---------------------------------------------------------------------------------------------------------------
# Several sequences in one forward pass (continuous batching; docs/serving.md, "Batching")

# Rows of one backend GEMM below which every row takes the same kernel path as a row alone: the kernels'
# n == 1 gemv and their register tiles give a row the same bits, but float weights switch to packed panels at
# n >= 96 (avx512; f16 at 256). A batch is cut so no row's path depends on what else is in it (see _row_groups).
SMALL_GEMM_ROWS = 96


class Segment:
    """One sequence's consecutive rows of a batched forward: rows r0..r1-1 at positions p0.. of `slot`."""

    __slots__ = ("slot", "p0", "r0", "r1")

    def __init__(self, slot: int, p0: int, r0: int, r1: int) -> None:
        self.slot, self.p0, self.r0, self.r1 = slot, p0, r0, r1

    @property
    def n(self) -> int:
        return self.r1 - self.r0


class SlotCache:
    """KV caches of `n_slots` independent sequences in one allocation: per name an array
    `[n_slots, n_layer, n_ctx, ...]`, plus how many positions each slot holds (`lengths`)."""

    def __init__(self, n_slots: int, n_ctx: int, arrays: dict[str, np.ndarray]) -> None:
        self.n_slots, self.n_ctx = int(n_slots), int(n_ctx)
        self.arrays = arrays
        self.lengths = np.zeros(self.n_slots, np.int64)
        self.plans: dict[Any, Any] = {}  # the model's per-slot plans over these arrays (e.g. one-call decode)

    def keep(self, slot: int, n: int) -> None:
        """Drop the slot's positions >= n (they are overwritten by the next tokens)."""
        if not 0 <= n <= self.lengths[slot]:
            raise ValueError(f"slot {slot} holds {int(self.lengths[slot])} positions, cannot keep {n}")
        self.lengths[slot] = n

    def clear(self, slot: int) -> None:
        self.lengths[slot] = 0

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """The first n positions of slot src into slot dst (a shared system prompt)."""
        if not 0 <= n <= self.lengths[src]:
            raise ValueError(f"slot {src} holds {int(self.lengths[src])} positions, cannot copy {n}")
        for a in self.arrays.values():
            a[dst, :, :n] = a[src, :, :n]
        self.lengths[dst] = n

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class BatchedDecoder:
    """The batched forward a `DecoderModel` subclass gets by implementing `_slot_arrays` and `_forward_rows`.

    `forward_batch(cache, tokens[T], seq[T], pos[T], logits_rows)`: every linear layer runs as one backend GEMM
    over the rows (cut only where a row's kernel path would depend on the batch, `_row_groups`), rope at each
    row's position, attention of each sequence over its own cache with the same code as a single sequence,
    the output layer only for `logits_rows`. A row's result does not depend on the rest of the batch.
    """

    n_ctx: int
    file: Any

    def new_slot_cache(self, n_slots: int, n_ctx: int | None = None) -> SlotCache:
        """A KV cache of `n_slots` sequences of up to `n_ctx` (default: the model's) positions each."""
        n_ctx = self.n_ctx if n_ctx is None else int(n_ctx)
        if n_slots < 1 or n_ctx < 1:
            raise ValueError(f"a slot cache needs n_slots >= 1 and n_ctx >= 1, got {n_slots}, {n_ctx}")
        return SlotCache(n_slots, n_ctx, self._slot_arrays(n_slots, n_ctx))

    def forward_batch(self, cache: SlotCache, tokens: Sequence[int] | np.ndarray, seq: Sequence[int] | np.ndarray,
                      pos: Sequence[int] | np.ndarray, logits_rows: Sequence[int]) -> np.ndarray:
        """Append each row's token to its sequence's cache at its position; logits `[len(logits_rows), n_vocab]`, a
        new array of each call (the caller may keep its rows).

        A sequence's rows must be adjacent, at consecutive positions starting at its cached length (or
        below it: the cache is cut there first)."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        sq = np.asarray(seq, dtype=np.int64).reshape(-1)
        ps = np.asarray(pos, dtype=np.int64).reshape(-1)
        T = ids.size
        if T == 0 or sq.size != T or ps.size != T:
            raise ValueError(f"tokens, seq and pos must be non-empty and of one length, got {T}, {sq.size}, {ps.size}")
        bad = ids[(ids < 0) | (ids >= self.n_vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is out of range for a vocabulary of {self.n_vocab}")
        segs = _segments(sq, ps, cache)
        rows = [int(r) for r in logits_rows]
        if any(not 0 <= r < T for r in rows):
            raise ValueError(f"logits_rows must be in 0..{T - 1}, got {rows}")
        check = getattr(self.file, "check_unchanged", None)
        if check is not None:
            check()
        # long segments first, each alone; then the short ones (see _row_groups)
        order = sorted(range(len(segs)), key=lambda i: segs[i].n < SMALL_GEMM_ROWS)
        perm = np.concatenate([np.arange(segs[i].r0, segs[i].r1) for i in order])
        inv = np.empty(T, np.int64)
        inv[perm] = np.arange(T)
        psegs, r = [], 0
        for i in order:
            s = segs[i]
            psegs.append(Segment(s.slot, s.p0, r, r + s.n))
            r += s.n
        for s in psegs:
            cache.lengths[s.slot] = s.p0  # keep: positions >= p0 are overwritten
        h = self._rows(cache, ids[perm], ps[perm], psegs)
        for s in psegs:
            cache.lengths[s.slot] = s.p0 + s.n
        if not rows:
            return np.empty((0, self.n_vocab), np.float32)
        out = self._head_rows(h[inv[rows]])
        if not np.isfinite(out).all():
            raise NumericalError("the forward pass produced non-finite logits")
        return out

    def _rows(self, cache: SlotCache, ids: np.ndarray, pos: np.ndarray, segs: list[Segment]) -> np.ndarray:
        """Hidden states of the (permuted) rows: each one-token segment through the one-call layers with the
        other one-token segments (what a sequence's decode step alone runs, so its bits are that step's), in
        calls of fewer than SMALL_GEMM_ROWS tokens; the longer segments through `_forward_rows`."""
        plans = self._plans_over(cache.arrays, True, cache.plans)  # type: ignore[attr-defined]
        if plans is None:
            return self._forward_rows(cache, ids, pos, segs, _row_groups(segs))
        one = [s for s in segs if s.n == 1]
        rest = [s for s in segs if s.n > 1]
        h = np.empty((ids.size, self.hparams.n_embd), np.float32)  # type: ignore[attr-defined]
        if rest:
            rows = np.concatenate([np.arange(s.r0, s.r1) for s in rest])
            moved, r = [], 0
            for s in rest:
                moved.append(Segment(s.slot, s.p0, r, r + s.n))
                r += s.n
            h[rows] = self._forward_rows(cache, ids[rows], pos[rows], moved, _row_groups(moved))
        for i in range(0, len(one), SMALL_GEMM_ROWS - 1):
            part = one[i:i + SMALL_GEMM_ROWS - 1]
            rows = np.array([s.r0 for s in part], np.int64)
            h[rows] = self._decode_planned(plans, self._embed(ids[rows]), pos[rows],  # type: ignore[attr-defined]
                                           np.array([s.slot for s in part], np.int64))
        return h

    def _head_rows(self, h: np.ndarray) -> np.ndarray:
        """The output layer on the rows that need logits, in GEMMs of fewer than SMALL_GEMM_ROWS rows (the
        kernel path of a row alone, as in a single sequence's last row)."""
        if h.shape[0] < SMALL_GEMM_ROWS:
            return self._head(h)
        return np.concatenate([self._head(h[i:i + SMALL_GEMM_ROWS - 1])
                               for i in range(0, h.shape[0], SMALL_GEMM_ROWS - 1)])

    def _slot_arrays(self, n_slots: int, n_ctx: int) -> dict[str, np.ndarray]:
        """The zeroed cache arrays `[n_slots, n_layer, n_ctx, ...]` of this architecture."""
        raise NotImplementedError

    def _forward_rows(self, cache: SlotCache, ids: np.ndarray, pos: np.ndarray, segs: list[Segment],
                      groups: list[slice]) -> np.ndarray:
        """Hidden states [T, n_embd] of the rows; writes each row's keys/values into its slot's cache."""
        raise NotImplementedError

    def _gemm(self, groups: list[slice], weights: Sequence[TensorView], prep: Any, xs: tuple[np.ndarray, ...],
              *args: Any) -> list[np.ndarray]:
        """`backend.matmul_many(weights, prep(*(x[rows] for x in xs), *args))` per row group (no `prep`: the one
        x's rows as they are), concatenated per weight."""
        be: Backend = self.backend  # type: ignore[attr-defined]

        def run(g: slice) -> list[np.ndarray]:
            x = prep(*(a[g] for a in xs), *args) if prep is not None else xs[0][g]
            return be.matmul_many(list(weights), x)
        if len(groups) == 1:
            return run(groups[0])
        parts = [run(g) for g in groups]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(weights))]

    # provided by DecoderModel, which comes first in a model's bases
    @property
    def n_vocab(self) -> int:
        raise NotImplementedError

    def _head(self, h: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _segments(seq: np.ndarray, pos: np.ndarray, cache: SlotCache) -> list[Segment]:
    """The rows cut into sequences (adjacent rows, consecutive positions), checked against the cache."""
    segs: list[Segment] = []
    T, r0 = seq.size, 0
    seen: set[int] = set()
    while r0 < T:
        r1 = r0 + 1
        while r1 < T and seq[r1] == seq[r0]:
            r1 += 1
        slot, p0 = int(seq[r0]), int(pos[r0])
        if not 0 <= slot < cache.n_slots:
            raise ValueError(f"sequence {slot} is not a slot of this cache (0..{cache.n_slots - 1})")
        if slot in seen:
            raise ValueError(f"the rows of sequence {slot} must be adjacent")
        seen.add(slot)
        if not np.array_equal(pos[r0:r1], np.arange(p0, p0 + r1 - r0)):
            raise ValueError(f"the positions of sequence {slot} must be consecutive")
        if not 0 <= p0 <= cache.lengths[slot]:
            raise ValueError(f"sequence {slot} holds {int(cache.lengths[slot])} positions; cannot append at {p0}")
        if p0 + r1 - r0 > cache.n_ctx:
            raise ContextOverflowError(f"Requested tokens ({p0 + r1 - r0}) exceed context window of {cache.n_ctx}")
        segs.append(Segment(slot, p0, r0, r1))
        r0 = r1
    return segs


def _row_groups(segs: list[Segment]) -> list[slice]:
    """Rows per backend GEMM, so every row takes the kernel path it would take in its sequence alone: a
    segment of SMALL_GEMM_ROWS or more rows alone (its path is the one of its length); the shorter ones
    (decode rows, small prompt chunks) together in groups of fewer than SMALL_GEMM_ROWS rows (gemv and
    tiles give a row the same bits). Segments come long first (forward_batch orders them)."""
    groups: list[slice] = []
    start = cur = 0
    for s in segs:
        if s.n >= SMALL_GEMM_ROWS:
            groups.append(slice(s.r0, s.r1))
            start = cur = s.r1
            continue
        if cur - start + s.n >= SMALL_GEMM_ROWS:
            groups.append(slice(start, cur))
            start = cur
        cur = s.r1
    if cur > start:
        groups.append(slice(start, cur))
    return groups
