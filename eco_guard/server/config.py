"""Server settings, in one frozen object so the CLI, tests and benchmarks share defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    """Limits and batching knobs of one server process.

    The defaults are sized for the bundled 135M model on a small CPU: a 10 ms window is
    long enough for clients that resend together to land in one batch, and short enough
    that a lone request barely notices it.
    """

    #: requests larger than this are refused with 413 before they are parsed
    max_body_bytes: int = 1_000_000
    #: a non-streaming request (or a stream's first token) taking longer gets 504
    request_timeout_s: float = 120.0
    #: how long the micro-batcher waits for companions after the first request of a batch
    batch_window_ms: float = 10.0
    #: most rows in one batched generate
    max_batch_size: int = 16
    #: used when a request gives no max_tokens
    default_max_tokens: int = 128
    #: most texts one /v1/guard/check request may carry
    max_check_inputs: int = 256
    #: most words one /v1/guard/check request may ask to classify, summed over its inputs
    #: (each input's scored turn: a text, or a chat's last user turn). A chat request is
    #: bounded by the model's context; a check has no model, and classifying costs about
    #: 0.5 ms a word on two cores, so the default bounds one request to tens of seconds.
    max_check_words: int = 50_000
    #: /metrics asks for an API key too (when keys are configured)
    protect_metrics: bool = False

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")
        if not 0 <= self.batch_window_ms <= 10:
            raise ValueError("batch_window_ms must be between 0 and 10")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be at least 1")
        if self.max_check_inputs < 1:
            raise ValueError("max_check_inputs must be at least 1")
        if self.max_check_words < 1:
            raise ValueError("max_check_words must be at least 1")


@dataclass(frozen=True)
class ServeSetup:
    """What one ``eco-guard serve`` serves, where, and to whom: shared by the plain server
    and the Ray Serve app, so the two take the same settings the same way."""

    #: served name -> fitted guard directory
    guards: Mapping[str, Path]
    host: str = "127.0.0.1"
    port: int = 8000
    config: ServerConfig = field(default_factory=ServerConfig)
    #: one audit file for every guard (None: each guard's policy decides)
    audit_path: Path | None = None
    #: the keys file (None: no file; ECO_GUARD_API_KEY may still add a key)
    api_keys: Path | None = None
    #: serve beyond loopback without keys (warned)
    allow_unauthenticated: bool = False
    #: export traces through an SDK tracer provider configured from OTEL_* variables
    otel: bool = False
    #: put prompts and answers in spans
    trace_content: bool = False
