"""Helpers for the server tests: a real uvicorn server in a thread, keys, guard variants.

The in-thread server is the real app on a real loopback socket (the official ``openai``
client talks to it over HTTP); it shares the session's loaded runner instead of loading
the model again, which is what makes several servers per test run affordable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import benchmark_module

free_port = benchmark_module("spawn").free_port

REFUSAL = "The refuse variant will not talk about that."
FLAGGED = "What is the capital of France?"
UNFLAGGED = "What is the capital of Australia?"
#: (prompt, flagged, words one of which its answer names). The 135M model does not know
#: every capital, but its answer names the capital or the country it was asked about,
#: never another request's: how concurrent tests tell answers were not mixed up.
CAPITAL_CASES: list[tuple[str, bool, tuple[str, str] | None]] = [
    ("What is the capital of Australia?", False, ("Canberra", "Australia")),
    ("What is the capital of France?", True, None),
    ("What is the capital of Japan?", False, ("Tokyo", "Japan")),
    ("Which city is the capital of France?", True, None),
    ("What is the capital of Italy?", False, ("Rome", "Italy")),
    ("What language do people speak in France?", True, None),
    ("What is the capital of Germany?", False, ("Berlin", "Germany")),
    ("Who is the president of France?", True, None),
]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys(path: Path, keys: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"keys": keys}), encoding="utf-8")
    return path


def refuse_variant(source: Path, dest: Path) -> Path:
    """A copy of a fitted guard whose policy refuses instead of corrupting: the same
    classifier, a different decision for flagged requests (what a policy edit looks like)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)
    set_action(dest, "refuse")
    return dest


def set_action(guard_dir: Path, action: str) -> None:
    """Rewrite the guard's stored policy action atomically (as a deploy would)."""
    path = guard_dir / "guard.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for target in doc["policy"]["targets"]:
        target["action"] = action
        target["refusal"] = REFUSAL
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def live_app(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port from a thread; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-thread server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def build_app(guards: dict[str, Path], runner: Any, *, audit: Path | None = None, keys: Path | None = None, tracing: Any = None, **config: Any) -> Any:
    """The production app (registry, service, auth) over ``guards``, sharing ``runner``."""
    from eco_guard.server.app import create_app
    from eco_guard.server.auth import KeyRing
    from eco_guard.server.config import ServerConfig
    from eco_guard.server.metrics import Metrics
    from eco_guard.server.registry import GuardRegistry
    from eco_guard.server.service import GuardService

    registry = GuardRegistry(guards, audit_path=audit, runner=runner)
    registry.load_all()
    metrics = Metrics()
    cfg = ServerConfig(**config)
    app = create_app(GuardService(registry, cfg, metrics), cfg, keys=KeyRing(keys, guards, environ={}), tracing=tracing, metrics=metrics)
    app.state.registry = registry
    return app
