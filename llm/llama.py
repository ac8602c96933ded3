"""``tilellm.Llama``: llama-cpp-python's ``Llama`` class over a :class:`tilellm.Model`.

Same constructor arguments, method names, defaults and OpenAI-style result dicts, so code written for
llama-cpp-python runs with only its import changed::

    from tilellm import Llama
    llm = Llama(model_path="model.gguf", n_ctx=2048)
    out = llm("Q: Name the planets in the solar system. A: ", max_tokens=32, stop=["Q:", "\\n"], echo=True)
    print(out["choices"][0]["text"])

The forward pass, sampling and the KV cache (with prefix reuse) are the native ``Model``'s; this module only
translates arguments and results. What a CPU engine has no use for (GPU offload) is accepted with a warning;
what tilellm does not implement (LoRA, speculative decoding, ...) raises ``UnsupportedError``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tilellm.quant.errors import UnsupportedError

from .api import Model, ModelState, load
from .generation import GenerationChunk, LogitsProcessors, StoppingCriteria, TokenLogprob
from .text.chat_tools import ToolCall, resolve_tools, template_uses_tools, tool_call_delta, tool_call_message
from .text.infill import FimTokens, fim_tokens

__all__ = ["Llama", "LlamaState", "LLAMA_POOLING_TYPE_UNSPECIFIED", "LLAMA_POOLING_TYPE_NONE",
           "LLAMA_POOLING_TYPE_MEAN", "LLAMA_POOLING_TYPE_CLS", "LLAMA_POOLING_TYPE_LAST"]

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "random seed"
# llama.cpp's pooling types (llama_pooling_type)
LLAMA_POOLING_TYPE_UNSPECIFIED, LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_MEAN = -1, 0, 1
LLAMA_POOLING_TYPE_CLS, LLAMA_POOLING_TYPE_LAST = 2, 3
_POOLING = {LLAMA_POOLING_TYPE_NONE: "none", LLAMA_POOLING_TYPE_MEAN: "mean", LLAMA_POOLING_TYPE_CLS: "cls",
            LLAMA_POOLING_TYPE_LAST: "last"}

_GPU_WARNED = False
CONSTRAIN_MODULE = "tilellm.llm.text.constrain"


def _warn_gpu(names: list[str]) -> None:
    global _GPU_WARNED
    if not _GPU_WARNED:
        _GPU_WARNED = True
        warnings.warn(f"tilellm is a CPU engine: {', '.join(names)} ignored", UserWarning, stacklevel=3)


@dataclass
class LlamaState:
    """What :meth:`Llama.save_state` returns (llama-cpp-python's ``LlamaState``: the tokens and the context)."""

    input_ids: np.ndarray
    n_tokens: int
    state: ModelState
    seed: int

    @property
    def llama_state_size(self) -> int:
        return self.state.nbytes


class Llama:
    """A GGUF model behind llama-cpp-python's interface. ``model`` is the native :class:`tilellm.Model`."""

    def __init__(
        self,
        model_path: str,
        *,
        n_gpu_layers: int = 0,
        split_mode: int = 1,
        main_gpu: int = 0,
        tensor_split: Sequence[float] | None = None,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        kv_overrides: Mapping[str, Any] | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        rope_scaling_type: int | None = -1,
        pooling_type: int = LLAMA_POOLING_TYPE_UNSPECIFIED,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        logits_all: bool = False,
        embedding: bool = False,
        offload_kqv: bool = True,
        flash_attn: bool = False,
        last_n_tokens_size: int = 64,
        lora_base: str | None = None,
        lora_scale: float = 1.0,
        lora_path: str | None = None,
        chat_format: str | None = None,
        chat_handler: Any = None,
        draft_model: Any = None,
        tokenizer: Any = None,
        type_k: int | None = None,
        type_v: int | None = None,
        spm_infill: bool = False,
        verbose: bool = True,
        backend: str = "auto",
        context_shift: bool = False,
        n_keep: int = 0,
        n_discard: int = 0,
        **kwargs: Any,
    ) -> None:
        """Load ``model_path`` (llama-cpp-python's arguments and defaults: ``n_ctx=512`` (0 = the model's),
        ``n_batch=512``, ``n_threads=None`` (physical cores), ``seed`` (0xFFFFFFFF = random), ``verbose``).

        ``n_threads_batch`` is accepted; one thread count serves prompt and generation here (the larger wins).
        ``spm_infill``: infill prompts put the suffix before the prefix (``<SUF> suffix <PRE> prefix <MID>``).
        GPU arguments (``n_gpu_layers``, ``main_gpu``, ``tensor_split``, ``offload_kqv``, ``flash_attn``) are
        accepted with a one-time warning. ``backend`` (tilellm's own) picks the kernel variant.
        ``type_k`` / ``type_v``: the KV cache types as ggml ids (0 f32, 1 f16, 8 q8_0, 30 bf16) or names; None: f16.
        ``context_shift``, ``n_keep``, ``n_discard`` (llama.cpp's ``--context-shift``, ``--keep`` and the server's
        ``n_discard``; not in llama-cpp-python, which always ends a completion at a full context with
        ``finish_reason`` "length", as the default False does): completions shift a full context instead
        (:meth:`tilellm.Model.generate`).
        """
        gpu = [n for n, v, d in (("n_gpu_layers", n_gpu_layers, 0), ("main_gpu", main_gpu, 0),
                                 ("tensor_split", tensor_split, None), ("offload_kqv", offload_kqv, True),
                                 ("flash_attn", flash_attn, False), ("split_mode", split_mode, 1)) if v != d]
        if gpu:
            _warn_gpu(gpu)
        unsupported = [n for n, v in (("lora_path", lora_path), ("lora_base", lora_base),
                                      ("kv_overrides", kv_overrides), ("chat_handler", chat_handler),
                                      ("draft_model", draft_model), ("tokenizer", tokenizer)) if v is not None]
        unsupported += [n for n, v in (("rope_freq_base", rope_freq_base), ("rope_freq_scale", rope_freq_scale))
                        if v != 0.0]
        if vocab_only:
            unsupported.append("vocab_only")
        if unsupported:
            raise UnsupportedError(f"Llama(): {', '.join(unsupported)} not supported by tilellm")
        if kwargs:
            warnings.warn(f"Llama(): unknown arguments ignored: {', '.join(sorted(kwargs))}", UserWarning,
                          stacklevel=2)
        if pooling_type not in (LLAMA_POOLING_TYPE_UNSPECIFIED, *_POOLING):
            raise ValueError(f"pooling_type must be one of -1, 0, 1, 2, 3, got {pooling_type!r}")
        threads = n_threads if n_threads_batch is None or n_threads is None else max(n_threads, n_threads_batch)
        self._seed = None if seed is None or seed == LLAMA_DEFAULT_SEED or seed < 0 else int(seed)
        self.model_path = str(model_path)
        self.verbose = bool(verbose)
        t0 = time.perf_counter()
        self.model: Model = load(model_path, n_ctx=n_ctx, n_threads=threads, n_batch=n_batch, backend=backend,
                                 seed=self._seed, type_k="f16" if type_k is None else type_k,
                                 type_v="f16" if type_v is None else type_v)
        if self.verbose:
            print(f"tilellm: loaded {self.model.desc} from {self.model_path} in {time.perf_counter() - t0:.2f}s "
                  f"(n_ctx={self.model.n_ctx}, backend={self.model.backend}, threads={self.model.n_threads})",
                  file=sys.stderr)
            summary = getattr(self.model.decoder, "kv_summary", None)
            if summary is not None:
                print(f"tilellm: {summary()}", file=sys.stderr)
        self.n_batch = int(n_batch)
        self.last_n_tokens_size = int(last_n_tokens_size)
        self.context_params_logits_all = bool(logits_all)
        self.embedding = bool(embedding)
        self.pooling_type = int(pooling_type)
        self.chat_format = chat_format
        self.spm_infill = bool(spm_infill)
        self._shift_kw: dict[str, Any] = {"context_shift": bool(context_shift), "n_keep": n_keep,
                                          "n_discard": n_discard}
        self._metadata: dict[str, str] | None = None
        self._scores = np.zeros((0, self.model.n_vocab), np.float32)

    # -- model facts ------------------------------------------------------------------------
    def n_ctx(self) -> int:
        """Context window in tokens."""
        return self.model.n_ctx

    def n_vocab(self) -> int:
        """Vocabulary size."""
        return self.model.n_vocab

    def n_embd(self) -> int:
        """Hidden size."""
        dec: Any = self.model.decoder
        return int(dec.hparams.n_embd) if dec is not None else 0

    def token_bos(self) -> int:
        """The BOS token id (-1 if none)."""
        b = getattr(self.model.tokenizer, "bos_id", None)
        return -1 if b is None else int(b)

    def token_eos(self) -> int:
        """The EOS token id (-1 if none)."""
        e = getattr(self.model.tokenizer, "eos_id", None)
        return -1 if e is None else int(e)

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF metadata as llama.cpp shows it: every value a string (arrays as ``[a, b, ...]``)."""
        if self._metadata is None:
            out = {}
            for k, v in self.model.metadata.items():
                if isinstance(v, (list, tuple, np.ndarray)):
                    v = "[" + ", ".join(str(x) for x in list(v)[:1000]) + (", ...]" if len(v) > 1000 else "]")
                out[str(k)] = v if isinstance(v, str) else str(v)
            self._metadata = out
        return self._metadata

    @property
    def n_tokens(self) -> int:
        """Tokens in the context."""
        return self.model.n_past

    @property
    def input_ids(self) -> np.ndarray:
        """The tokens in the context."""
        return np.asarray(self.model.context_tokens, dtype=np.intc)

    @property
    def scores(self) -> np.ndarray:
        """Logits of the last :meth:`eval`: ``[n, n_vocab]`` (every new token with ``logits_all``, else the last)."""
        return self._scores

    # -- tokens -----------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of UTF-8 ``text``. As in llama.cpp, ``add_bos`` adds BOS only if the model adds one."""
        want = bool(add_bos) and bool(getattr(self.model.tokenizer, "add_bos", False))
        return self.model.tokenize(text, add_bos=want, special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """The bytes of ``tokens`` (a leading BOS's following space dropped, as llama-cpp-python does)."""
        tok = self.model.tokenizer
        n = self.model.n_vocab
        out = b""
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < n:
                raise ValueError(f"detokenize(): {t!r} is not a token id of a vocabulary of {n}")
            out += tok.token_to_piece(int(t), special=special)
        if tokens and int(tokens[0]) == self.token_bos() and out[:1] == b" ":
            out = out[1:]
        return out

    # -- raw evaluation ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the context."""
        self.model.reset()

    def eval(self, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to the context; their logits go to :attr:`scores`."""
        ids = list(tokens)
        out = self.model.eval(ids, logits_all=self.context_params_logits_all)
        self._scores = np.asarray(out, dtype=np.float32).reshape(-1, self.model.n_vocab)

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor: LogitsProcessors | None = None,
                 stopping_criteria: StoppingCriteria | None = None, grammar: Any = None,
                 logit_bias: dict[Any, float] | None = None) -> Iterator[int]:
        """Sampled token ids, one at a time, without end (stop when you like; end-of-generation tokens are yielded
        too, as in llama-cpp-python). ``reset=True`` reuses the cached prefix of ``tokens``; False appends them."""
        from .generation import as_processors
        from .text.sampling import Sampler

        procs = as_processors(self._join_processors(logits_processor, self._constraint(grammar, None)) or None,
                              "logits_processor")
        criteria = as_processors(stopping_criteria, "stopping_criteria")
        sampler = Sampler(temp, top_k, top_p, min_p, repeat_penalty, self.last_n_tokens_size, seed=self.model._rng,
                          presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                          typical_p=typical_p, logit_bias=logit_bias, mirostat_mode=mirostat_mode,
                          mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        ids = list(tokens)
        logits = self.model._prefill(ids)[0] if reset else self.model.eval(ids)
        while True:
            history = self.model.context_tokens
            input_ids = np.asarray(history, dtype=np.intc)
            for proc in procs:
                logits = np.asarray(proc(input_ids, np.array(logits, dtype=np.float32, copy=True)), np.float32)
            tok = sampler.sample(logits, history)
            if any(bool(c(input_ids, logits)) for c in criteria):
                return
            yield tok
            logits = self.model.eval([tok])

    def save_state(self) -> LlamaState:
        """A copy of the context (tokens and KV cache)."""
        st = self.model.save_state()
        return LlamaState(np.asarray(st.tokens, dtype=np.intc), len(st.tokens), st,
                          -1 if self._seed is None else self._seed)

    def load_state(self, state: LlamaState) -> None:
        """Restore a context from :meth:`save_state`."""
        if not isinstance(state, LlamaState):
            raise ValueError(f"load_state() needs a LlamaState from save_state(), got {type(state).__name__}")
        self.model.load_state(state.state)

    def set_seed(self, seed: int) -> None:
        """Seed the model's sampling generator."""
        self.model._rng = np.random.default_rng(seed)

    # -- embeddings -------------------------------------------------------------------------
    def _pooling(self) -> str:
        if self.pooling_type != LLAMA_POOLING_TYPE_UNSPECIFIED:
            return _POOLING[self.pooling_type]
        p = self.model.metadata.get(f"{self.model.arch}.pooling_type")
        return _POOLING.get(int(p), "mean") if isinstance(p, (int, np.integer)) else "mean"

    def embed(self, input: str | Sequence[str], normalize: bool = True, truncate: bool = True,
              return_count: bool = False) -> Any:
        """Embeddings of a string (a list of floats) or a list of strings (a list of lists); with pooling NONE,
        one vector per token. Needs ``Llama(..., embedding=True)``. ``return_count`` also returns the tokens used.
        Pooling: ``pooling_type``, else the GGUF's ``{arch}.pooling_type``, else mean (llama.cpp would give a
        causal LM per-token vectors)."""
        if not self.embedding:
            raise ValueError("Llama model must be created with embedding=True to call this method")
        single = isinstance(input, str)
        texts = [input] if isinstance(input, str) else list(input)
        pooling = self._pooling()
        out: list[Any] = []
        count = 0
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"embed() input must be a string or a list of strings, got {text!r}")
            ids = self.tokenize(text.encode("utf-8"))
            count += min(len(ids), self.model.n_ctx) if truncate else len(ids)
            out.append(self.model.embed(ids, pooling=pooling, normalize=normalize, truncate=truncate).tolist())
        res: Any = out[0] if single else out
        return (res, count) if return_count else res

    def create_embedding(self, input: str | Sequence[str], model: str | None = None) -> dict[str, Any]:
        """OpenAI-style embeddings: ``{"object": "list", "data": [{"object": "embedding", "embedding", "index"}],
        "model", "usage"}``."""
        embeds, n = self.embed(input, return_count=True)
        if isinstance(input, str):
            embeds = [embeds]
        return {"object": "list", "data": [{"object": "embedding", "embedding": e, "index": i}
                                           for i, e in enumerate(embeds)],
                "model": model or self.model_path, "usage": {"prompt_tokens": n, "total_tokens": n}}

    # -- completion -------------------------------------------------------------------------
    def _constraint(self, grammar: Any, response_format: Any) -> LogitsProcessors | None:
        """A logits processor enforcing `grammar` (GBNF) or `response_format` (JSON), from the structured-output
        module; UnsupportedError naming it when this build lacks it."""
        if grammar is None and (response_format is None or response_format.get("type", "text") == "text"):
            return None
        if importlib.util.find_spec(CONSTRAIN_MODULE) is None:
            raise UnsupportedError(f"grammar / response_format need structured output ({CONSTRAIN_MODULE}), "
                                   "which this build of tilellm lacks")
        mod = importlib.import_module(CONSTRAIN_MODULE)
        make = getattr(mod, "logits_processor", None)
        if make is None:
            raise UnsupportedError(f"{CONSTRAIN_MODULE} has no logits_processor(tokenizer, grammar=, "
                                   "response_format=); cannot constrain the output")
        proc: LogitsProcessors = make(self.model.tokenizer, grammar=grammar, response_format=response_format)
        return proc

    @staticmethod
    def _join_processors(*ps: LogitsProcessors | None) -> list[Any]:
        out: list[Any] = []
        for p in ps:
            if p is None:
                continue
            out.extend(p if isinstance(p, (list, tuple)) else [p])
        return out

    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: StoppingCriteria | None = None,
        logits_processor: LogitsProcessors | None = None,
        grammar: Any = None,
        logit_bias: dict[Any, float] | None = None,
    ) -> Any:
        """Complete ``prompt``: a ``text_completion`` dict, or an iterator of chunks with ``stream=True``.

        ``echo`` puts the prompt in front of the text; ``logprobs`` = n gives each token's log-probability and
        the n most likely alternatives (``{"tokens", "text_offset", "token_logprobs", "top_logprobs"}``).
        ``suffix``: fill in the middle between ``prompt`` and ``suffix`` where the model has FIM tokens (the GGUF's
        ``tokenizer.ggml.fim_pre/suf/mid_token_id``, or their well-known texts); without them the suffix is
        appended to the returned text, as llama-cpp-python does.
        """
        procs = self._join_processors(logits_processor, self._constraint(grammar, None))
        fim = fim_tokens(self.model.metadata) if suffix is not None else None
        infill = fim is not None and fim.complete
        if suffix is not None and not isinstance(suffix, str):
            raise ValueError(f"suffix must be a string or None, got {type(suffix).__name__}")
        ids = self._infill_ids(prompt, str(suffix), fim) if infill and fim is not None else self._prompt_ids(prompt)
        prompt_text = self.detokenize(ids).decode("utf-8", "replace") if not isinstance(prompt, str) else prompt
        prompt_lps = self._prompt_logprobs(ids, logprobs) if echo and logprobs is not None else None
        it = self.model.generate(ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 min_p=min_p, repeat_penalty=repeat_penalty, stop=stop, seed=seed, stream=True,
                                 repeat_last_n=self.last_n_tokens_size, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, typical_p=typical_p, logit_bias=logit_bias,
                                 logits_processor=procs or None, stopping_criteria=stopping_criteria,
                                 logprobs=logprobs, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau,
                                 mirostat_eta=mirostat_eta, **self._shift_kw)
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": model or self.model_path}
        tail = suffix if suffix is not None and not infill else ""
        chunks = self._completion_chunks(it, head, ids, prompt_text, echo, logprobs, prompt_lps, tail)
        if stream:
            return chunks
        text = ""
        lp: dict[str, list[Any]] | None = None
        finish = None
        usage: dict[str, int] = {}
        for c in chunks:
            ch = c["choices"][0]
            text += ch["text"]
            if ch["logprobs"] is not None:
                lp = lp or {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
                for k in lp:
                    lp[k].extend(ch["logprobs"][k])
            finish = ch["finish_reason"] or finish
            usage = c.get("usage") or usage
        return {**head, "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}],
                "usage": usage}

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            # completions parse control-token text, and add BOS as the model asks (llama-cpp-python)
            return self.model.tokenize(prompt, add_bos=None, special=True)
        if isinstance(prompt, (list, tuple)):
            return list(prompt)
        raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")

    def _infill_ids(self, prompt: str | list[int], suffix: str, fim: FimTokens) -> list[int]:
        """llama-cpp-python's FIM prompt: [BOS] <PRE> prefix <SUF> suffix <MID> (suffix first with ``spm_infill``);
        the texts are tokenized without special-token parsing."""
        tok = self.model.tokenizer
        bos = [self.token_bos()] if getattr(tok, "add_bos", False) and self.token_bos() >= 0 else []
        if isinstance(prompt, str):
            pre = self.model.tokenize(prompt, add_bos=False, special=False) if prompt else []
        else:
            pre = self._prompt_ids(prompt)
        suf = self._text_ids(suffix)
        head, body = [fim.pre] + pre, [fim.suf] + suf
        return bos + (body + head if self.spm_infill else head + body) + [fim.mid]

    def _text_ids(self, text: str) -> list[int]:
        """Token ids of `text` as it continues other text: without SentencePiece's dummy-prefix space (tokenized
        behind a marker character whose tokens are then dropped, llama-cpp-python's way)."""
        if not text:
            return []
        tok = self.model.tokenizer
        if not getattr(tok, "add_space_prefix", False):
            return self.model.tokenize(text, add_bos=False, special=False)
        marker = "\u263a"
        ids = self.model.tokenize(marker + text, add_bos=False, special=False)
        want, got = (" " + marker).encode(), b""
        for k, t in enumerate(ids):
            got += tok.token_to_piece(t, special=False)
            if got == want:
                return ids[k + 1:]
            if not want.startswith(got):
                break
        return self.model.tokenize(text, add_bos=False, special=False)  # the marker merged with the text

    def _piece(self, t: int) -> str:
        return self.detokenize([t]).decode("utf-8", "ignore")

    def _prompt_logprobs(self, ids: list[int], n: int) -> list[TokenLogprob | None]:
        """Log-probabilities of the prompt tokens (the first has none) by one `logits_all` pass; it leaves the
        prompt in the cache, so the generation that follows reuses it."""
        from .generation import top_logprobs

        self.model.reset()
        logits = np.asarray(self.model.eval(ids, logits_all=True)).reshape(len(ids), -1)
        return [None] + [top_logprobs(logits[i - 1], ids[i], n) for i in range(1, len(ids))]

    def _lp_dict(self, lps: Sequence[TokenLogprob | None], toks: Sequence[int], offset: int
                 ) -> tuple[dict[str, list[Any]], int]:
        out: dict[str, list[Any]] = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
        for t, lp in zip(toks, lps):
            piece = self._piece(t)
            out["tokens"].append(piece)
            out["text_offset"].append(offset)
            offset += len(piece)
            if lp is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
            else:
                out["token_logprobs"].append(lp.logprob)
                top = {self._piece(i): v for i, v in lp.top.items()}
                top[piece] = lp.logprob  # the sampled token is always listed
                out["top_logprobs"].append(top)
        return out, offset

    def _completion_chunks(self, it: Iterator[GenerationChunk], head: dict[str, Any], ids: list[int],
                           prompt_text: str, echo: bool, logprobs: int | None,
                           prompt_lps: list[TokenLogprob | None] | None, tail: str = "") -> Iterator[dict[str, Any]]:
        offset = len(prompt_text)  # text_offset counts from the start of the prompt, as in llama-cpp-python
        if echo:
            lp = self._lp_dict(prompt_lps, ids, 0)[0] if prompt_lps is not None else None
            yield {**head, "choices": [{"text": prompt_text, "index": 0, "logprobs": lp, "finish_reason": None}]}
        for c in it:
            lp = None
            if logprobs is not None and c.logprobs is not None:
                lp, offset = self._lp_dict(c.logprobs, c.tokens, offset)
            if c.finish_reason is None:
                yield {**head, "choices": [{"text": c.text, "index": 0, "logprobs": lp, "finish_reason": None}]}
            else:
                text = c.text + tail  # a suffix the model could not infill ends the text
                if text or (lp and lp["tokens"]):
                    yield {**head, "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": None}]}
                usage = {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                         "total_tokens": c.prompt_tokens + c.completion_tokens}
                yield {**head, "choices": [{"text": "", "index": 0, "logprobs": None,
                                            "finish_reason": c.finish_reason}], "usage": usage}

    def __call__(self, prompt: str | list[int], *args: Any, **kwargs: Any) -> Any:
        """Same as :meth:`create_completion`."""
        return self.create_completion(prompt, *args, **kwargs)

    # -- chat -------------------------------------------------------------------------------
    def _chat_template(self) -> str | None:
        if self.chat_format is None:
            return None
        from .text import chat

        find = getattr(chat, "builtin_template", None)
        if find is None:
            raise UnsupportedError(f"chat_format={self.chat_format!r} needs the built-in chat formats "
                                   "(tilellm.llm.text.chat.builtin_template), which this build lacks")
        source: str = find(self.chat_format)
        return source

    def create_chat_completion(
        self,
        messages: list[dict[str, Any]],
        functions: Any = None,
        function_call: Any = None,
        tools: Any = None,
        tool_choice: Any = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = None,
        seed: int | None = None,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: LogitsProcessors | None = None,
        grammar: Any = None,
        logit_bias: dict[Any, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
    ) -> Any:
        """Reply to ``messages`` with the model's chat template (or ``chat_format``): a ``chat.completion``
        dict, or with ``stream=True`` an iterator of ``chat.completion.chunk`` dicts (a role delta, content
        deltas, then an empty delta with the finish reason).

        ``tools`` are given to the template (as Hugging Face's ``tools``); ``tool_choice={"type": "function",
        "function": {"name": N}}`` constrains the reply to N's JSON arguments and returns it as
        ``message["tool_calls"]`` with ``finish_reason`` ``"tool_calls"`` (``"length"`` if cut short);
        ``"auto"`` / ``"none"`` give an ordinary reply (llama-cpp-python's generic chat formats). ``functions`` /
        ``function_call`` are the legacy spellings.
        """
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        tool_list, call = resolve_tools(tools, tool_choice, functions, function_call)
        template = self._chat_template()
        if tool_list and call is None:
            source = template if template is not None else self._file_template()
            if not template_uses_tools(source):
                warnings.warn("the chat template does not use `tools`: the model is not shown them", UserWarning,
                              stacklevel=2)
        if call is not None:
            grammar, response_format = None, call.response_format  # the call's arguments, whatever else was asked
        procs = self._join_processors(logits_processor, self._constraint(grammar, response_format))
        extra: dict[str, Any] = {"tools": tool_list} if tool_list else {}
        ids = self.model.chat_prompt(messages, template=template, **extra)
        n_lp = (top_logprobs or 0) if logprobs else None
        it = self.model.generate(ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 min_p=min_p, repeat_penalty=repeat_penalty, stop=stop, seed=seed, stream=True,
                                 repeat_last_n=self.last_n_tokens_size, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, typical_p=typical_p, logit_bias=logit_bias,
                                 logits_processor=procs or None, logprobs=n_lp, mirostat_mode=mirostat_mode,
                                 mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, **self._shift_kw)
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": model or self.model_path}
        if stream:
            return self._chat_chunks(it, head, n_lp, call)
        text = ""
        lps: list[dict[str, Any]] = []
        finish, usage = None, {}
        for c in it:
            text += c.text
            lps.extend(self._chat_lp(c, n_lp))
            if c.finish_reason is not None:
                finish = c.finish_reason
                usage = {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                         "total_tokens": c.prompt_tokens + c.completion_tokens}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if call is not None:
            message = tool_call_message(call, text)
            finish = "tool_calls" if finish == "stop" else finish
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": message,
                             "logprobs": {"content": lps} if n_lp is not None else None, "finish_reason": finish}],
                "usage": usage}

    def _file_template(self) -> str:
        """The chat template the model file gives (or the built-in format chosen for it)."""
        from .text.chat import get_chat_template

        return get_chat_template(self.model.metadata)

    def _chat_lp(self, c: GenerationChunk, n_lp: int | None) -> list[dict[str, Any]]:
        if n_lp is None or not c.logprobs:
            return []
        out = []
        for t, lp in zip(c.tokens, c.logprobs):
            piece = self._piece(t)
            out.append({"token": piece, "logprob": lp.logprob, "bytes": list(piece.encode()),
                        "top_logprobs": [{"token": self._piece(i), "logprob": v, "bytes": list(self._piece(i).encode())}
                                         for i, v in lp.top.items()]})
        return out

    def _chat_chunks(self, it: Iterator[GenerationChunk], head: dict[str, Any], n_lp: int | None,
                     call: ToolCall | None = None) -> Iterator[dict[str, Any]]:
        head = {**head, "object": "chat.completion.chunk"}
        if call is None:
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                        "finish_reason": None}]}
        first = True  # a tool call's first delta carries the role, the call id and the function name
        for c in it:
            lp = self._chat_lp(c, n_lp)
            if c.text or (call is not None and first):
                delta: dict[str, Any] = {"content": c.text} if call is None else tool_call_delta(call, c.text, first)
                first = False
                yield {**head, "choices": [{"index": 0, "delta": delta,
                                            "logprobs": {"content": lp} if n_lp is not None else None,
                                            "finish_reason": None}]}
            if c.finish_reason is not None:
                finish = "tool_calls" if call is not None and c.finish_reason == "stop" else c.finish_reason
                yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the model."""
        self.model.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tilellm.Llama {self.model_path!r} n_ctx={self.model.n_ctx if not self.model.closed else '-'}>"
