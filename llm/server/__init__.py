"""An OpenAI-compatible HTTP server for tilellm models (``llm-server``; the ``server`` extra).

Layout: ``engine.py`` (scheduler: slots, queue, steps), ``runner.py`` (the step function's forward
pass), ``sampling.py`` (per-sequence sampling; the text is ``generation.TextStream``), ``app.py`` (routes),
``schemas.py`` (request/response bodies), ``middleware.py`` (API key, body limit, counting),
``metrics.py`` (Prometheus), ``cli.py`` (``llm-server``). See docs/serving.md.

The engine imports no web framework, so it can be used on its own::

    engine = Engine(tilellm.load("model.gguf"), n_slots=4).start()
    handle = engine.submit(GenerationRequest(prompt_ids, max_tokens=32))
    async for event in handle: ...
"""
from .engine import (
    Completion,
    Engine,
    EngineClosedError,
    EngineStats,
    GenerationRequest,
    QueueFullError,
    RequestHandle,
    TokenEvent,
    TokenLogprobs,
    Usage,
)
from .runner import BatchedRunner, BatchEntry, ForwardRunner, ModelPerSlotRunner, SerialRunner
from .sampling import SamplingParams

__all__ = [
    "Engine", "EngineStats", "GenerationRequest", "TokenEvent", "TokenLogprobs", "Usage", "Completion", "RequestHandle",
    "QueueFullError", "EngineClosedError", "BatchEntry", "ForwardRunner", "SerialRunner", "ModelPerSlotRunner",
    "BatchedRunner",
    "SamplingParams",
]
