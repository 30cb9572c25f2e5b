"""OpenAI-compatible HTTP server with the guard in front of the local runner.

``create_app(guard, config)`` builds the FastAPI app; ``serve(...)`` runs it on uvicorn
(``eco-guard serve``). Needs the ``server`` extra (fastapi, uvicorn, prometheus-client).
"""

from __future__ import annotations

from .config import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]


def __getattr__(name: str) -> object:  # lazy: importing the package must not require the extra
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .run import serve

        return serve
    raise AttributeError(name)
