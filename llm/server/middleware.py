"""ASGI middleware in front of every route: API key, body size limit, request counting."""
from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .metrics import Metrics

__all__ = ["Guard"]

OPEN_PATHS = frozenset({"/health"})  # answered without the API key (load balancers probe it)


class Guard:
    """Checks ``Authorization: Bearer <key>`` (401), reads the body up to ``max_body`` bytes (413)
    and counts every answered request by route and status in ``metrics``.

    The body is read here once and replayed to the app, so the limit also holds for chunked uploads
    without a Content-Length; after the body, the app's ``receive`` is the server's again, so it
    still learns about a client that disconnects.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, api_key: str | None, max_body: int,
                 endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status_seen = [0]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = int(message["status"])
            await send(message)

        try:
            await self._handle(scope, receive, counting_send, path)
        finally:
            self.metrics.record(endpoint, status_seen[0] or 499)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if self.api_key is not None and path not in OPEN_PATHS and not self._authorized(scope):
            resp = error_response(401, "Invalid API key: send 'Authorization: Bearer <key>'",
                                  code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = error_response(413, f"request body exceeds {self.max_body} bytes", code="request_too_large")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    await too_big(scope, receive, send)
                    return
            except ValueError:
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await too_big(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key):
                    return True
        return False
