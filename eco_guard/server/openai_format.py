"""Response bodies in OpenAI's shapes (chat.completion, chat.completion.chunk, SSE).

The guard's decision rides along in an extra top-level ``eco_guard`` field, which
OpenAI clients keep (``response.model_extra``) without complaining.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

from ..decision import Decision

DONE = "data: [DONE]\n\n"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def decision_json(decision: Decision) -> dict[str, Any]:
    """The decision as strict JSON: NaN scores (classifier failed) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return clean(decision.to_dict())


def finish_reason(completion_tokens: int, max_tokens: int) -> str:
    return "length" if completion_tokens >= max_tokens else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(*, cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int, decision: Decision) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens),
        "eco_guard": decision_json(decision),
    }


def chunk(*, cid: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
    """One SSE event carrying a chat.completion.chunk; ``delta=None`` means no choices (usage chunk)."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **extra,
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
