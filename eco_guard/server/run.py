"""Run the server on uvicorn (``eco-guard serve``).

Shutdown is graceful: on SIGTERM/SIGINT uvicorn stops accepting connections and waits for
in-flight requests, then the app's lifespan drains both batchers, and only then is the
audit file closed, so no accepted request loses its answer or its audit line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ServerConfig

if TYPE_CHECKING:
    from ..guard import Guard


def warm_up(guard: "Guard") -> None:
    """Load the model and run the classifier and one token of generation once, so the
    first client does not pay seconds of lazy loading (nothing is audited)."""
    from ..runner.base import GenerationOptions, GenerationRow

    chat = [{"role": "user", "content": "Hello"}]
    guard.decide_batch([chat])
    guard.runner.generate([GenerationRow(chat)], GenerationOptions(max_new_tokens=1))


def serve(
    guard_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServerConfig = ServerConfig(),
    audit_path: str | Path | None = None,
    graceful_timeout_s: float = 30.0,
    log_level: str = "info",
) -> None:
    """Load the guard and its runner, then serve until told to stop."""
    import uvicorn

    from ..audit import JsonlAudit
    from ..guard import Guard
    from .app import create_app

    audit = JsonlAudit(Path(audit_path)) if audit_path is not None else True
    guard = Guard.load(guard_dir, audit=audit, progress=True)
    warm_up(guard)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(guard, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=int(graceful_timeout_s),
            lifespan="on",
        )
    )
    try:
        server.run()
    finally:
        guard.close()
