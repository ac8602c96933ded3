"""A lean server-sent-events response: pre-encoded ``data:`` lines written straight to the ASGI ``send``.

A streamed completion sends one event per token per client; on a 2-core machine the event loop's CPU per event
is taken from the kernels' threads. sse-starlette's response builds a ``ServerSentEvent`` (a StringIO and a
regex split) and opens an anyio cancel scope for every send; this one writes bytes the route has already
encoded, keeps the stream alive with a comment after ``ping`` seconds of silence, and stops the stream when the
client disconnects (the generator's ``finally`` then cancels its sequences).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["EventStream", "sse_data"]

_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


def sse_data(obj: Any) -> bytes:
    """One event carrying ``obj`` as compact JSON (``"[DONE]"`` as it is)."""
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"  # JSON has no raw newline: one data line


class EventStream(StreamingResponse):
    """A response streaming the byte chunks of ``events`` as ``text/event-stream`` (a StreamingResponse for
    FastAPI's sake: its headers and background tasks; the sending is this class's own)."""

    def __init__(self, events: AsyncIterator[bytes], ping: float = 15.0) -> None:
        super().__init__(events, headers=_HEADERS, media_type="text/event-stream")
        self.events = events
        self.ping = ping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False
        last = [asyncio.get_running_loop().time()]

        async def watch() -> None:  # the client hanging up cancels the stream, wherever it waits
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        async def keep_alive() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(max(0.0, last[0] + self.ping - loop.time()))
                if loop.time() - last[0] >= self.ping:
                    await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                    last[0] = loop.time()

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        watcher = asyncio.ensure_future(watch())
        pinger = asyncio.ensure_future(keep_alive())
        loop = asyncio.get_running_loop()
        try:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                last[0] = loop.time()
            pinger.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            if hasattr(task, "uncancel"):  # the cancel was ours: the task goes on (Python >= 3.11)
                task.uncancel()
        except OSError:
            pass  # the connection broke while writing: nobody to tell
        finally:
            watcher.cancel()
            pinger.cancel()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()  # runs the generator's finally (cancels the sequences) if it did not end
        if self.background is not None:
            await self.background()
