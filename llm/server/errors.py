"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

__all__ = ["APIError", "error_response", "validation_message"]


class APIError(Exception):
    """An error with its HTTP status and OpenAI error ``type`` / ``code``; raised anywhere in a route."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, type=self.type, code=self.code, param=self.param,
                              headers=self.headers)


def error_response(status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union member it tried into loc (e.g. 'str', 'list[str]'); keep field names
    # and indices only
    parts = [str(p) for p in loc if isinstance(p, int) or not any(c in str(p) for c in "[]") and str(p)
             not in ("str", "int", "float", "bool", "function-after")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def validation_message(err: ValidationError) -> tuple[str, str | None]:
    """A one-line message for a request that failed validation, and the first offending field."""
    msgs: list[str] = []
    first: str | None = None
    seen: set[str] = set()
    for e in err.errors():
        where = _loc(tuple(e.get("loc", ())))
        if e.get("type") == "extra_forbidden":
            msg = f"unknown field '{where}'"
        else:
            text = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
            msg = f"{where}: {text}" if where else text
        if msg not in seen:
            seen.add(msg)
            msgs.append(msg)
        if first is None and where:
            first = where
    return "; ".join(msgs[:5]) or "invalid request", first
