"""Body-size limit as pure ASGI middleware.

It runs before FastAPI reads the body, so an oversized request is refused with 413
before it is parsed: a declared ``Content-Length`` over the limit is refused at once,
unread; a chunked body is read only up to the limit.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimit:
    """Refuse request bodies larger than ``max_bytes`` with an OpenAI-style 413."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        if declared is not None:
            # Within the limit, and the HTTP layer holds the client to its Content-Length.
            await self.app(scope, receive, send)
            return
        # Chunked: read it here, up to the limit, and replay it. (A limit enforced inside
        # receive() would be swallowed by FastAPI's body parser and reported as a 400.)
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            error_body(
                f"the request body is larger than the server's limit of {self.max_bytes} bytes",
                "invalid_request_error",
                None,
                "request_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})
