"""Run the server on uvicorn (``eco-guard serve``).

Shutdown is graceful: on SIGTERM/SIGINT uvicorn stops accepting connections and waits for
in-flight requests, then the app's lifespan drains both batchers, and only then are the
audit files closed, so no accepted request loses its answer or its audit line.

SIGHUP reloads every changed guard directory (and the keys file) without dropping a
request; see :meth:`~eco_guard.server.registry.GuardRegistry.reload`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .config import ServeSetup

if TYPE_CHECKING:
    from .registry import GuardRegistry

log = logging.getLogger("eco_guard.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys_enabled: bool, allow_unauthenticated: bool) -> None:
    """Loopback is the default bind; anything else without keys needs an explicit flag."""
    if is_loopback(host) or keys_enabled:
        return
    if not allow_unauthenticated:
        raise InputError(
            f"--host {host}: serving beyond loopback without API keys would let anyone who reaches the port use the guard; "
            "give --api-keys FILE (or set ECO_GUARD_API_KEY), or pass --allow-unauthenticated to do it anyway"
        )
    print(f"eco-guard serve: WARNING: serving on {host} WITHOUT authentication (--allow-unauthenticated)", file=sys.stderr, flush=True)


def warm_up(registry: "GuardRegistry") -> None:
    """Run each guard's classifier and one token of generation once, so the first client
    does not pay seconds of lazy loading (nothing is audited)."""
    from ..runner.base import GenerationOptions

    chat = [{"role": "user", "content": "Hello"}]
    for entry in registry.entries():
        decisions = entry.guard.decide_batch([chat])
        entry.guard.answer_decided_batch([chat], decisions, GenerationOptions(max_new_tokens=1))


def install_sighup(app: Any) -> None:
    """SIGHUP -> the app's reload (guards and keys), logged; called on the running loop."""
    loop = asyncio.get_running_loop()

    def fire() -> None:
        async def run() -> None:
            report = await app.state.reload()
            log.warning("SIGHUP reload: %s", report)

        loop.create_task(run())

    loop.add_signal_handler(signal.SIGHUP, fire)


def serve(setup: ServeSetup, *, graceful_timeout_s: float = 30.0, log_level: str = "info") -> None:
    """Load the guards (one runner per base model), then serve until told to stop."""
    import uvicorn

    from .app import create_app
    from .auth import KeyRing
    from .metrics import Metrics
    from .registry import GuardRegistry
    from .service import GuardService
    from .tracing import Tracing, setup_from_environment

    keys = KeyRing(setup.api_keys, setup.guards)
    check_exposure(setup.host, keys.enabled, setup.allow_unauthenticated)
    if setup.otel:
        setup_from_environment()
    registry = GuardRegistry(setup.guards, audit_path=setup.audit_path, progress=True)
    registry.load_all()
    warm_up(registry)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
    metrics = Metrics()
    config = setup.config
    app = create_app(
        GuardService(registry, config, metrics), config, keys=keys, tracing=Tracing(content=setup.trace_content), metrics=metrics, on_start=install_sighup
    )

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=setup.host,
            port=setup.port,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=int(graceful_timeout_s),
            lifespan="on",
        )
    )
    try:
        server.run()
    finally:
        registry.close()
