"""The FastAPI app: OpenAI-compatible routes in front of one or more guards.

Routes only translate between HTTP and a :class:`~eco_guard.server.backend.Backend`
(in-process micro-batchers, or Ray Serve deployments): they authenticate the caller
(:mod:`.auth`), pick the guard the request's ``model`` names, and shape the answer.
Limits live in :mod:`.limits`, error shapes in :mod:`.errors`, counters in
:mod:`.metrics`, spans in :mod:`.tracing`.

Order of refusals for a guarded route: no or unknown key 401, unknown guard 404
(``model_not_found``), key not allowed that guard 403, then the request's own 400s.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..guard import scored_turn_words
from ..runner.base import GenerationOptions, normalize_messages
from . import openai_format as fmt
from .auth import KeyRing, Principal
from .backend import Backend, Chat, Decided
from .batcher import BatcherClosed
from .config import ServerConfig
from .errors import APIError, from_exception, install_handlers, sse_error
from .limits import BodyLimit
from .metrics import Metrics
from .schemas import ChatCompletionRequest, ChatMessage, GuardCheckRequest
from .tracing import Tracing

T = TypeVar("T")
RELOAD_PATH = "/v1/admin/reload"
KNOWN_PATHS = ("/v1/chat/completions", "/v1/models", "/v1/guard/check", "/healthz", "/metrics", RELOAD_PATH)


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


def _response_decision(decided: Decided) -> dict[str, Any]:
    return {**fmt.decision_json(decided.decision), "guard": decided.guard, "guard_version": decided.version}


def create_app(
    backend: Backend,
    config: ServerConfig = ServerConfig(),
    *,
    keys: KeyRing | None = None,
    tracing: Tracing | None = None,
    metrics: Metrics | None = None,
    on_start: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """Build the app over ``backend``; its guards should already be loaded (see ``serve``).

    ``metrics`` is the backend's too when it counts (one registry per app); ``on_start``
    runs on the live event loop at startup (``serve`` installs its SIGHUP handler there).
    """
    metrics = metrics or Metrics()
    tracing = tracing or Tracing()
    auth_on = keys is not None and keys.enabled
    state = {"draining": False}

    @asynccontextmanager
    async def lifespan(started: FastAPI) -> AsyncIterator[None]:
        backend.start()
        if on_start is not None:
            on_start(started)
        try:
            yield
        finally:
            state["draining"] = True
            await backend.drain()

    app = FastAPI(title="eco-guard", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.backend = backend
    app.state.metrics = metrics
    install_handlers(app)

    # ------------------------------------------------------------------ auth and guard choice

    def caller(request: Request) -> Principal | None:
        """The authenticated caller (None when the server has no keys); 401 otherwise."""
        if not auth_on:
            return None
        assert keys is not None
        principal = keys.authenticate(request.headers.get("authorization"))
        if principal is None:
            metrics.refused.labels(status="401").inc()
            given = "an unknown API key" if request.headers.get("authorization") else "no API key"
            raise APIError(401, f"{given} was given; send 'Authorization: Bearer <key>'", code="invalid_api_key")
        return principal

    def admit(principal: Principal | None, model: str | None) -> tuple[str, Any]:
        """(guard name, ticket) for the request's ``model``: 404 unknown, 403 not allowed."""
        names = backend.names()
        if model is None:
            if len(names) != 1:
                raise APIError(400, f"model: name the guard to use, one of {', '.join(names)}", param="model", code="invalid_value")
            model = names[0]
        ticket = backend.pin(model)
        if ticket is None:
            raise APIError(404, f"The model '{model}' does not exist; this server's guards are: {', '.join(names)}", param="model", code="model_not_found")
        if principal is not None and not principal.may_use(model):
            metrics.refused.labels(status="403").inc()
            raise APIError(403, f"the API key '{principal.name}' may not use the guard '{model}'", type="permission_error", param="model", code="model_not_allowed")
        return model, ticket

    async def bounded(work: Callable[[], Awaitable[T]]) -> T:
        """Run one request's work under the request timeout; map timeouts and shutdown."""
        try:
            return await asyncio.wait_for(work(), config.request_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"the request took longer than {config.request_timeout_s:g} s", type="timeout", code="timeout") from None
        except BatcherClosed as exc:
            raise APIError(503, f"the server is shutting down ({exc})", type="server_error", code="shutting_down") from None

    # ------------------------------------------------------------------ chat

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        principal = caller(request)
        guard, ticket = admit(principal, req.model)
        chat: Chat = normalize_messages(_chat_of(req.messages))
        options = GenerationOptions(
            max_new_tokens=req.max_completion_tokens or req.max_tokens or config.default_max_tokens,
            temperature=float(req.temperature or 0.0),
            top_p=float(req.top_p if req.top_p is not None else 1.0),
            ignore_eos=req.ignore_eos,
        )
        span = tracing.start_request(
            "chat", guard, {"gen_ai.request.max_tokens": options.max_new_tokens, "gen_ai.request.temperature": options.temperature, "gen_ai.request.top_p": options.top_p}
        )
        key = principal.name if principal is not None else None
        try:
            with tracing.use(span):
                prompt_tokens = await backend.prompt_tokens(ticket, chat, options)
                if req.stream:
                    include_usage = bool(req.stream_options and req.stream_options.include_usage)
                    response = await _stream_response(ticket, guard, chat, options, prompt_tokens, include_usage, key, span)
                    span = None  # the stream ends it
                    return response
                decided, answer = await bounded(lambda: _answer(ticket, guard, chat, options, key))
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        finish = fmt.finish_reason(answer.completion_tokens, options.max_new_tokens)
        tracing.end(span, **{"gen_ai.usage.input_tokens": prompt_tokens, "gen_ai.usage.output_tokens": answer.completion_tokens, "gen_ai.response.finish_reasons": [finish]})
        metrics.prompt_tokens.inc(prompt_tokens)
        metrics.completion_tokens.inc(answer.completion_tokens)
        body = fmt.chat_completion(
            cid=fmt.completion_id(),
            model=guard,
            text=answer.text,
            finish=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=answer.completion_tokens,
            decision=decided.decision,
        )
        body["eco_guard"] = _response_decision(decided)
        return body

    async def _decide_one(ticket: Any, guard: str, chat: Chat, kind: str, key: str | None) -> Decided:
        with tracing.classify(guard, chat) as span:
            decided = (await backend.decide(ticket, [chat], kind, key))[0]
            span.decided(decided.decision)
        return decided

    async def _answer(ticket: Any, guard: str, chat: Chat, options: GenerationOptions, key: str | None) -> tuple[Decided, Any]:
        decided = await _decide_one(ticket, guard, chat, "chat", key)
        if decided.decision.action == "refuse":
            return decided, await backend.answer(ticket, chat, decided, options)
        with tracing.generate(guard, {"gen_ai.request.max_tokens": options.max_new_tokens}) as span:
            answer = await backend.answer(ticket, chat, decided, options)
            span.answered(answer.text, answer.completion_tokens, fmt.finish_reason(answer.completion_tokens, options.max_new_tokens))
        if answer.decision is not None and answer.decision.stage == "output":
            # the output stage caught the answer: the response reports its decision
            decided = replace(decided, decision=answer.decision)
            metrics.observe_decision(answer.decision.action, answer.decision.target, guard=decided.guard, key=key)
        return decided, answer

    async def _stream_response(
        ticket: Any, guard: str, chat: Chat, options: GenerationOptions, prompt_tokens: int, include_usage: bool, key: str | None, root: Any
    ) -> StreamingResponse:
        start = time.perf_counter()

        async def begin() -> tuple[Decided, AsyncIterator[str], str | None]:
            decided = await _decide_one(ticket, guard, chat, "stream", key)
            pieces = backend.stream(ticket, chat, decided, options)
            try:
                first = await anext(pieces, None)
            except BaseException:
                await pieces.aclose()  # type: ignore[attr-defined]
                raise
            return decided, pieces, first

        # The decision and the first token come under the timeout, so a stuck stream still
        # gets a proper 504 before any 200 header has gone out.
        decided, pieces, first = await bounded(begin)
        metrics.ttft.observe(time.perf_counter() - start)
        cid, created = fmt.completion_id(), int(time.time())
        model = guard

        async def events() -> AsyncIterator[str]:
            parts: list[str] = []
            error: BaseException | None = None
            n = 0
            with tracing.use(root), tracing.generate(guard, {"gen_ai.request.max_tokens": options.max_new_tokens, "eco_guard.stream": True}) as span:
                try:
                    yield fmt.chunk(cid=cid, model=model, created=created, delta={"role": "assistant", "content": ""}, eco_guard=_response_decision(decided))
                    piece = first
                    while piece is not None:
                        parts.append(piece)
                        yield fmt.chunk(cid=cid, model=model, created=created, delta={"content": piece})
                        piece = await anext(pieces, None)
                    n = await backend.count_tokens(ticket, "".join(parts))
                    metrics.prompt_tokens.inc(prompt_tokens)
                    metrics.completion_tokens.inc(n)
                    finish = fmt.finish_reason(n, options.max_new_tokens)
                    span.answered("".join(parts), n, finish)
                    yield fmt.chunk(cid=cid, model=model, created=created, delta={}, finish=finish)
                    if include_usage:
                        yield fmt.chunk(cid=cid, model=model, created=created, delta=None, usage=fmt.usage(prompt_tokens, n))
                except Exception as exc:  # noqa: BLE001 - headers are out: report in-band
                    error = exc
                    yield sse_error(from_exception(exc))
                finally:
                    await pieces.aclose()  # type: ignore[attr-defined]
                    tracing.end(root, error, **{"gen_ai.usage.input_tokens": prompt_tokens, "gen_ai.usage.output_tokens": n})
            yield fmt.DONE

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ check

    @app.post("/v1/guard/check")
    async def guard_check(req: GuardCheckRequest, request: Request) -> Any:
        principal = caller(request)
        guard, ticket = admit(principal, req.model)
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
        key = principal.name if principal is not None else None
        span = tracing.start_request("check", guard, {"eco_guard.inputs": len(chats)})
        try:
            with tracing.use(span), tracing.classify(guard, chats[0] if len(chats) == 1 else []):
                decided = await bounded(lambda: backend.decide(ticket, chats, "check", key))
        except BaseException as exc:
            tracing.end(span, exc)
            raise
        tracing.end(span, **{"eco_guard.flagged_inputs": sum(d.decision.flagged for d in decided)})
        return {"object": "list", "data": [_response_decision(d) for d in decided]}

    # ------------------------------------------------------------------ the rest

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        principal = caller(request)
        names = [n for n in backend.names() if principal is None or principal.may_use(n)]
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "eco-guard"} for n in names]}

    @app.post(RELOAD_PATH)
    async def reload(request: Request) -> Any:
        principal = caller(request)
        if principal is not None and not principal.admin:
            metrics.refused.labels(status="403").inc()
            raise APIError(403, f"the API key '{principal.name}' is not an admin key", type="permission_error", code="admin_required")
        body = await do_reload()
        return JSONResponse(body, status_code=200 if body["ok"] else 422)

    async def do_reload() -> dict[str, Any]:
        """Reload the guards (and the keys file); what SIGHUP and the endpoint both run."""
        guards = await backend.reload()
        keys_error = keys.reload() if keys is not None and keys.path is not None else None
        ok = keys_error is None and all(g["status"] != "failed" for g in guards.values())
        return {"object": "reload", "ok": ok, "guards": guards, "keys_error": keys_error}

    app.state.reload = do_reload

    @app.get("/healthz")
    async def healthz() -> Any:
        body = {"status": "draining" if state["draining"] else "ok", "guards": backend.health()}
        return JSONResponse(body, status_code=503 if state["draining"] else 200)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if config.protect_metrics:
            caller(request)
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(_RequestMetrics, metrics=metrics)  # outermost: sees 413s too
    return app
