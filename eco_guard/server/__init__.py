"""OpenAI-compatible HTTP server with one or more guards in front of the local runner.

``create_app(backend, config, keys=...)`` builds the FastAPI app over a backend (the
in-process :class:`~eco_guard.server.service.GuardService`, or Ray Serve deployments in
:mod:`.ray_app`); ``serve(setup)`` runs it on uvicorn (``eco-guard serve``). Needs the
``server`` extra (fastapi, uvicorn, prometheus-client); traces the ``otel`` extra, Ray
Serve the ``ray`` extra. User docs: docs/server.md.
"""

from __future__ import annotations

from .config import ServerConfig, ServeSetup

__all__ = ["ServeSetup", "ServerConfig", "create_app", "serve"]


def __getattr__(name: str) -> object:  # lazy: importing the package must not require the extra
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .run import serve

        return serve
    raise AttributeError(name)
