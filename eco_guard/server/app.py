"""The FastAPI app: OpenAI-compatible routes in front of the guard.

Routes only translate between HTTP and :class:`~eco_guard.server.service.GuardService`;
batching, auditing and generation live there, limits in :mod:`.limits`, error shapes in
:mod:`.errors`, counters in :mod:`.metrics`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..guard import Guard, scored_turn_words
from ..runner.base import normalize_messages
from . import openai_format as fmt
from .batcher import BatcherClosed
from .config import ServerConfig
from .errors import APIError, from_exception, install_handlers, sse_error
from .limits import BodyLimit
from .metrics import Metrics
from .schemas import ChatCompletionRequest, ChatMessage, GuardCheckRequest
from .service import ChatJob, GuardService, count_tokens

T = TypeVar("T")
KNOWN_PATHS = ("/v1/chat/completions", "/v1/models", "/v1/guard/check", "/healthz", "/metrics")


class _RequestMetrics:
    """ASGI wrapper counting every request by endpoint and status, timing it to its last byte
    (so a stream's latency is the whole stream, not the time to its headers)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        status = 500
        start = time.perf_counter()

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)


def _chat_of(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    # OpenAI's newer "developer" role is its system role.
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


def create_app(guard: Guard, config: ServerConfig = ServerConfig()) -> FastAPI:
    """Build the app for one guard; the runner should already be loaded (see ``serve``)."""
    metrics = Metrics()
    service = GuardService(guard, config, metrics)
    model_name = config.model_name or guard.name
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            state["draining"] = True
            await service.drain()

    app = FastAPI(title="eco-guard", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.metrics = metrics
    install_handlers(app)

    async def bounded(work: Callable[[], Awaitable[T]]) -> T:
        """Run one request's work under the request timeout; map timeouts and shutdown."""
        try:
            return await asyncio.wait_for(work(), config.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"the request took longer than {config.request_timeout_s:g} s", type="timeout", code="timeout") from None
        except BatcherClosed as exc:
            raise APIError(503, f"the server is shutting down ({exc})", type="server_error", code="shutting_down") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        job = service.validate_chat(
            _chat_of(req.messages),
            max_tokens=req.max_completion_tokens or req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            ignore_eos=req.ignore_eos,
        )
        model = req.model or model_name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _stream_response(job, model, include_usage)
        answer = await bounded(lambda: service.complete(job))
        metrics.prompt_tokens.inc(job.prompt_tokens)
        metrics.completion_tokens.inc(answer.completion_tokens)
        return fmt.chat_completion(
            cid=fmt.completion_id(),
            model=model,
            text=answer.text,
            finish=fmt.finish_reason(answer.completion_tokens, job.options.max_new_tokens),
            prompt_tokens=job.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            decision=answer.decision,
        )

    async def _stream_response(job: ChatJob, model: str, include_usage: bool) -> StreamingResponse:
        start = time.perf_counter()

        async def begin() -> tuple[Any, AsyncIterator[str], str | None]:
            decision, pieces = await service.stream(job)
            try:
                first = await anext(pieces, None)
            except BaseException:
                await pieces.aclose()
                raise
            return decision, pieces, first

        # The decision and the first token come under the timeout, so a stuck stream still
        # gets a proper 504 before any 200 header has gone out.
        decision, pieces, first = await bounded(begin)
        metrics.ttft.observe(time.perf_counter() - start)
        cid, created = fmt.completion_id(), int(time.time())

        async def events() -> AsyncIterator[str]:
            parts: list[str] = []
            try:
                yield fmt.chunk(cid=cid, model=model, created=created, delta={"role": "assistant", "content": ""}, eco_guard=fmt.decision_json(decision))
                piece = first
                while piece is not None:
                    parts.append(piece)
                    yield fmt.chunk(cid=cid, model=model, created=created, delta={"content": piece})
                    piece = await anext(pieces, None)
                n = count_tokens(service.runner, "".join(parts))
                metrics.prompt_tokens.inc(job.prompt_tokens)
                metrics.completion_tokens.inc(n)
                yield fmt.chunk(cid=cid, model=model, created=created, delta={}, finish=fmt.finish_reason(n, job.options.max_new_tokens))
                if include_usage:
                    yield fmt.chunk(cid=cid, model=model, created=created, delta=None, usage=fmt.usage(job.prompt_tokens, n))
            except Exception as exc:  # noqa: BLE001 - headers are out: report in-band
                yield sse_error(from_exception(exc))
            finally:
                await pieces.aclose()
            yield fmt.DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/guard/check")
    async def guard_check(req: GuardCheckRequest) -> Any:
        raw = [req.input] if isinstance(req.input, str) else list(req.input)
        if not raw:
            raise APIError(400, "input: give at least one text or chat", param="input", code="invalid_value")
        if len(raw) > config.max_check_inputs:
            raise APIError(400, f"input: {len(raw)} items; at most {config.max_check_inputs} per request", param="input", code="too_many_inputs")
        chats = [
            normalize_messages(item if isinstance(item, str) else _chat_of(item), where=f"input[{i}]")
            for i, item in enumerate(raw)
        ]
        words = [scored_turn_words(chat) for chat in chats]
        if sum(words) > config.max_check_words:
            longest = max(range(len(words)), key=words.__getitem__)
            raise APIError(
                400,
                f"input: {sum(words):,} words to classify (input[{longest}] alone has {words[longest]:,}); "
                f"at most {config.max_check_words:,} per request (eco-guard serve --max-check-words); "
                "split the request or the text",
                param="input",
                code="input_too_long",
            )
        decisions = await bounded(lambda: service.check(chats))
        return {"object": "list", "data": [fmt.decision_json(d) for d in decisions]}

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "eco-guard"}]}

    @app.get("/healthz")
    async def healthz() -> Any:
        body = {"status": "draining" if state["draining"] else "ok", "model": model_name, "targets": guard.target_ids}
        return JSONResponse(body, status_code=503 if state["draining"] else 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(_RequestMetrics, metrics=metrics)  # outermost: sees 413s too
    return app
