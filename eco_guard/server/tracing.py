"""OpenTelemetry traces of the request path (optional extra ``otel``).

One trace per request: a root span ``chat {guard}`` (or ``check {guard}``) with a child
``classify {guard}`` for the decision and, when the model answers, ``generate_content
{guard}``. (eco-guard has no output check; that span appears only once it does.)
Attribute names follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``);
eco-guard's own facts sit under ``eco_guard.*``.

Prompt and answer content is never recorded unless ``content=True``
(``eco-guard serve --trace-content``): traces usually leave the compliance boundary the
audit file lives in.

Without the opentelemetry packages, or without a configured tracer provider, every call
here is a no-op costing a function call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from ..decision import Decision

try:  # optional extra
    from opentelemetry import trace as _trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised only without the extra
    _trace = None  # type: ignore[assignment]

PROVIDER = "eco_guard"


def available() -> bool:
    return _trace is not None


class Tracing:
    """Spans for one app; ``provider`` defaults to the globally configured one."""

    def __init__(self, provider: Any = None, *, content: bool = False) -> None:
        self.content = content
        self._tracer = None
        if _trace is not None:
            self._tracer = (provider or _trace.get_tracer_provider()).get_tracer("eco_guard.server")

    def start_request(self, operation: str, guard: str, attributes: dict[str, Any]) -> Any:
        """Start (not enter) a request's root span; end it with :meth:`end`. Streams outlive
        their handler, so the root span's lifetime is managed by hand."""
        if self._tracer is None:
            return None
        attrs = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": guard, **_clean(attributes)}
        return self._tracer.start_span(f"{operation} {guard}", kind=SpanKind.SERVER, attributes=attrs)

    def use(self, span: Any) -> Any:
        """Make ``span`` current (children attach to it) without ending it on exit."""
        if span is None or _trace is None:
            return nullcontext()
        return _trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    @staticmethod
    def end(span: Any, error: BaseException | None = None, **attributes: Any) -> None:
        if span is None:
            return
        span.set_attributes(_clean(attributes))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.set_attribute("error.type", type(error).__name__)
        span.end()

    @contextmanager
    def classify(self, guard: str, chat: list[dict[str, str]]) -> Iterator[Any]:
        """Child span around a request's decision; call ``.decided(decision)`` on what it yields."""
        if self._tracer is None:
            yield _NoSpan()
            return
        attrs = {"gen_ai.operation.name": "classify", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": guard}
        if self.content:
            attrs["gen_ai.input.messages"] = json.dumps(chat, ensure_ascii=False)
        with self._tracer.start_as_current_span(f"classify {guard}", kind=SpanKind.INTERNAL, attributes=attrs) as span:
            yield _ClassifySpan(span)

    @contextmanager
    def generate(self, guard: str, attributes: dict[str, Any]) -> Iterator[Any]:
        """Child span around the answer's generation; ``.answered(text, tokens)`` on what it yields."""
        if self._tracer is None:
            yield _NoSpan()
            return
        attrs = {"gen_ai.operation.name": "generate_content", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": guard, **_clean(attributes)}
        with self._tracer.start_as_current_span(f"generate_content {guard}", kind=SpanKind.INTERNAL, attributes=attrs) as span:
            yield _GenerateSpan(span, self.content)


class _NoSpan:
    def decided(self, decision: Decision) -> None:
        return None

    def answered(self, text: str, completion_tokens: int, finish: str | None = None) -> None:
        return None


class _ClassifySpan(_NoSpan):
    def __init__(self, span: Any) -> None:
        self.span = span

    def decided(self, decision: Decision) -> None:
        self.span.set_attributes(decision_attributes(decision))


class _GenerateSpan(_NoSpan):
    def __init__(self, span: Any, content: bool) -> None:
        self.span = span
        self.content = content

    def answered(self, text: str, completion_tokens: int, finish: str | None = None) -> None:
        self.span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
        if finish is not None:
            self.span.set_attribute("gen_ai.response.finish_reasons", [finish])
        if self.content:
            self.span.set_attribute("gen_ai.output.messages", json.dumps([{"role": "assistant", "content": text}], ensure_ascii=False))


def decision_attributes(decision: Decision) -> dict[str, Any]:
    """The decision as span attributes (no content: ids, action, target, score)."""
    return _clean(
        {
            "eco_guard.request_id": decision.request_id,
            "eco_guard.flagged": decision.flagged,
            "eco_guard.action": decision.action,
            "eco_guard.target": decision.target,
            "eco_guard.score": decision.score,
            "eco_guard.threshold": decision.threshold,
            "eco_guard.error": decision.error,
        }
    )


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry refuses None values; NaN scores (classifier failed) are dropped too."""
    return {k: v for k, v in attributes.items() if v is not None and not (isinstance(v, float) and v != v)}


def setup_from_environment() -> None:
    """``eco-guard serve --otel``: an SDK tracer provider exporting per the standard
    ``OTEL_*`` variables: OTLP when ``opentelemetry-exporter-otlp`` is installed (endpoint
    from ``OTEL_EXPORTER_OTLP_ENDPOINT``), otherwise JSON lines on stderr."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found]

        exporter: Any = OTLPSpanExporter()
    except ImportError:
        import sys

        exporter = ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider = TracerProvider(resource=Resource.create({"service.name": "eco-guard"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _trace.set_tracer_provider(provider)
