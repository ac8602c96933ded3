"""Prometheus text exposition of the server's counters (GET /metrics)."""
from __future__ import annotations

import threading
import time
from collections import Counter

from .engine import EngineStats

__all__ = ["Metrics"]


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """HTTP request counters plus the engine's stats, rendered in the Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._started = time.time()

    def record(self, endpoint: str, status: int) -> None:
        """Count one finished HTTP request."""
        with self._lock:
            self._requests[(endpoint, status)] += 1

    def render(self, s: EngineStats) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP tilellm_{name} {help_}")
            lines.append(f"# TYPE tilellm_{name} {kind}")
            for labels, value in samples:
                v = repr(float(value)) if isinstance(value, float) else str(value)
                lines.append(f"tilellm_{name}{labels} {v}")

        with self._lock:
            reqs = sorted(self._requests.items())
        metric("http_requests_total", "counter", "HTTP requests answered, by endpoint and status.",
               [(f'{{endpoint="{_esc(e)}",status="{st}"}}', n) for (e, st), n in reqs] or [("", 0)])
        metric("requests_submitted_total", "counter", "Sequences submitted to the engine.",
               [("", s.requests_submitted)])
        metric("requests_finished_total", "counter", "Sequences finished, by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(s.requests_finished.items())])
        metric("prompt_tokens_total", "counter", "Prompt tokens evaluated (not counting reused ones).",
               [("", s.prompt_tokens)])
        metric("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's KV cache.",
               [("", s.cached_tokens)])
        metric("generated_tokens_total", "counter", "Tokens generated.", [("", s.generated_tokens)])
        metric("prompt_seconds_total", "counter", "Engine time spent evaluating prompts.",
               [("", s.prompt_seconds)])
        metric("generation_seconds_total", "counter", "Engine time spent generating tokens.",
               [("", s.generation_seconds)])
        metric("prompt_tokens_per_second", "gauge", "Prompt tokens per second of prompt time since start.",
               [("", s.prompt_tokens / s.prompt_seconds if s.prompt_seconds > 0 else 0.0)])
        metric("generation_tokens_per_second", "gauge", "Generated tokens per second of generation time since start.",
               [("", s.generated_tokens / s.generation_seconds if s.generation_seconds > 0 else 0.0)])
        metric("engine_steps_total", "counter", "Scheduler steps (forward passes).", [("", s.steps)])
        metric("decode_steps_total", "counter", "Steps with decode tokens only (no prompt chunk).",
               [("", s.decode_steps)])
        metric("decode_forward_seconds_total", "counter", "Wall time of the forward passes of decode-only steps.",
               [("", s.decode_forward_seconds)])
        metric("decode_step_seconds_total", "counter",
               "Wall time of decode-only steps: forward pass, sampling, text and events.",
               [("", s.decode_step_seconds)])
        metric("queue_length", "gauge", "Requests waiting for a slot.", [("", s.queue_length)])
        metric("queue_capacity", "gauge", "Requests that may wait before 503.", [("", s.max_queue)])
        metric("slots_busy", "gauge", "Slots serving a request.", [("", s.busy_slots)])
        metric("slots_total", "gauge", "Slots (-np).", [("", s.n_slots)])
        metric("kv_cache_tokens", "gauge", "Tokens held in KV caches.", [("", s.kv_tokens)])
        metric("kv_cache_capacity_tokens", "gauge", "Positions per slot (-c).", [("", s.n_ctx)])
        metric("uptime_seconds", "gauge", "Seconds since the server started.", [("", time.time() - self._started)])
        return "\n".join(lines) + "\n"
