"""OpenAI-style error bodies and the exception handlers that produce them.

OpenAI clients parse ``{"error": {"message", "type", "param", "code"}}`` and raise
``BadRequestError`` & co. from the status code, so every failure, ours or the user's,
leaves the server in exactly this shape and the server itself keeps running.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EcoGuardError, UserError

log = logging.getLogger("eco_guard.server")


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status)


def from_exception(exc: BaseException) -> APIError:
    """Map any exception raised while serving to the error the client should see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UserError):
        text = str(exc)
        code = "context_length_exceeded" if "context is" in text and "tokens" in text else "invalid_value"
        param = text.split(":", 1)[0].split("[", 1)[0] if ":" in text else None
        return APIError(400, text, param=param if param in ("messages", "max_tokens", "input") else None, code=code)
    log.error("internal error while serving: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in errors[:5])
    return APIError(400, f"invalid request: {detail}", param=param, code="invalid_value")


def install_handlers(app: FastAPI) -> None:
    """Route every error path of the app through :func:`error_response`."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type=kind, code=str(exc.status_code)))

    @app.exception_handler(EcoGuardError)
    async def _ours(_: Request, exc: EcoGuardError) -> JSONResponse:
        return error_response(from_exception(exc))

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_response(from_exception(exc))


def sse_error(err: APIError) -> str:
    """An error event for a stream whose 200 headers are already sent."""
    return f"data: {json.dumps(error_body(err.message, err.type, err.param, err.code))}\n\n"
