"""The same OpenAI routes on Ray Serve (``eco-guard serve --ray``; the ``ray`` extra).

Three deployments, each scaled on its own:

- ``Ingress``: the FastAPI app of :mod:`.app` (auth, routes, metrics, traces) over a
  :class:`RayBackend`, which sends work to the other two through deployment handles;
- ``Classifier``: decides and audits, batched with Ray Serve's ``@serve.batch``; loads
  the guards' classifiers only, never a language model. Each replica writes its own audit
  file, ``<audit stem>.<replica id>.jsonl``, and every line names its replica;
- ``Generator``: answers decided requests with ``Guard.answer_decided_batch``, batched
  with ``@serve.batch``; each replica loads the model once for all its guards.

A request is audited by the classifier replica that decided it, before any answer
exists, so a generation replica that dies loses no audit line; the backend retries an
answer whose replica died (answers are deterministic per request), and Serve restarts
the replica.

Reload: SIGHUP to the ``eco-guard serve --ray`` process redeploys with a new
``user_config``, which Serve hands to every replica's ``reconfigure`` in place; each
replica reloads its changed guard directories (a broken one keeps its old guard).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from ..decision import Decision
from ..decision import DecidedAnswer
from ..runner.base import GenerationOptions
from .backend import Chat, Decided
from .config import ServerConfig, ServeSetup
from .errors import APIError
from .registry import GuardRegistry

log = logging.getLogger("eco_guard.server")
APP_NAME = "eco-guard"
#: how often an answer is retried on another replica when its replica died mid-request
ANSWER_RETRIES = 3


def replica_id() -> str:
    """``Deployment#unique-id`` of the replica running this code."""
    context = serve.get_replica_context()
    return f"{context.deployment}#{context.replica_id.unique_id}"


def per_replica(path: Path, replica: str) -> Path:
    """``audit.jsonl`` -> ``audit.Classifier-abc123.jsonl``: one file per replica, so
    replicas on different machines never share a file."""
    return path.with_name(f"{path.stem}.{replica.replace('#', '-')}{path.suffix or '.jsonl'}")


class _Reloading:
    """``reconfigure(user_config)``: Serve calls it at start and on every redeploy with a
    changed ``user_config``; a new ``generation`` number means reload."""

    registry: GuardRegistry
    _generation: int | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        generation = int(user_config.get("generation", 0))
        if self._generation is not None and generation != self._generation:
            report = self.registry.reload()
            log.warning("%s reload (generation %d): %s", replica_id(), generation, report)
        self._generation = generation


@serve.deployment(name="Classifier", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class ClassifyDeployment(_Reloading):
    def __init__(self, guards: dict[str, str], audit_path: str | None, max_batch_size: int, batch_wait_s: float) -> None:
        self.replica = replica_id()
        self.registry = GuardRegistry(
            {name: Path(d) for name, d in guards.items()},
            audit_path=Path(audit_path) if audit_path else None,
            audit_path_for=lambda p: per_replica(p, self.replica),
            with_runner=False,
        )
        self.registry.load_all()
        self.decide.set_max_batch_size(max(max_batch_size, 64))
        self.decide.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def decide(self, rows: list[tuple[str, Chat, str, str | None]]) -> list[Decided]:
        from .service import decide_and_audit

        by_guard: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_guard[row[0]].append(i)
        out: dict[int, Decided] = {}
        for name, idx in by_guard.items():
            entry = self.registry.get(name)
            assert entry is not None, f"no guard {name!r}"  # the ingress admits served names only
            decided = await asyncio.to_thread(
                decide_and_audit, entry, [rows[i][1] for i in idx], [rows[i][2] for i in idx], [rows[i][3] for i in idx], replica=self.replica
            )
            out.update(zip(idx, decided))
        return [out[i] for i in range(len(rows))]


@serve.deployment(name="Generator", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class GenerateDeployment(_Reloading):
    def __init__(self, guards: dict[str, str], max_batch_size: int, batch_wait_s: float, torch_threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, torch_threads))  # replicas sharing a machine share its cores
        self.replica = replica_id()
        self.registry = GuardRegistry({name: Path(d) for name, d in guards.items()}, audit=False)
        self.registry.load_all()
        self.answer.set_max_batch_size(max_batch_size)
        self.answer.set_batch_wait_timeout_s(batch_wait_s)

    def _guard(self, name: str) -> Any:
        entry = self.registry.get(name)
        assert entry is not None, f"no guard {name!r}"
        return entry.guard

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def answer(self, rows: list[tuple[str, Chat, Decision, GenerationOptions]]) -> list[DecidedAnswer]:
        by_guard: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_guard[row[0]].append(i)
        out: dict[int, DecidedAnswer] = {}
        for name, idx in by_guard.items():
            answers = await self._guard(name).aanswer_decided_batch([rows[i][1] for i in idx], [rows[i][2] for i in idx], [rows[i][3] for i in idx])
            out.update(zip(idx, answers))
        return [out[i] for i in range(len(rows))]

    async def prompt_tokens(self, guard: str, chat: Chat, options: GenerationOptions) -> int:
        return self._guard(guard).prompt_tokens(chat, options)

    async def count_tokens(self, guard: str, text: str) -> int:
        return self._guard(guard).count_tokens(text)

    async def stream(self, guard: str, chat: Chat, decision: Decision, options: GenerationOptions) -> AsyncIterator[str]:
        async for piece in self._guard(guard).astream_decided(chat, decision, options):
            yield piece


class RayBackend:
    """The :class:`~eco_guard.server.backend.Backend` of the Ray ingress: tickets are guard
    names, and the work goes to the Classifier and Generator deployments."""

    def __init__(self, classifier: DeploymentHandle, generator: DeploymentHandle, names: list[str]) -> None:
        self.classifier = classifier
        self.generator = generator
        self._names = list(names)

    def names(self) -> list[str]:
        return list(self._names)

    def pin(self, guard: str) -> str | None:
        return guard if guard in self._names else None

    def health(self) -> dict[str, Any]:
        return {name: {"backend": "ray"} for name in self._names}

    def start(self) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def prompt_tokens(self, ticket: str, chat: Chat, options: GenerationOptions) -> int:
        return await self.generator.prompt_tokens.remote(ticket, chat, options)

    async def decide(self, ticket: str, chats: list[Chat], kind: str, key: str | None) -> list[Decided]:
        return list(await asyncio.gather(*(self.classifier.decide.remote((ticket, chat, kind, key)) for chat in chats)))

    async def answer(self, ticket: str, chat: Chat, decided: Decided, options: GenerationOptions) -> DecidedAnswer:
        for attempt in range(ANSWER_RETRIES + 1):
            try:
                return await self.generator.answer.remote((ticket, chat, decided.decision, options))
            except RayActorError as exc:  # the replica died under this request: another one answers
                if attempt == ANSWER_RETRIES:
                    raise APIError(503, f"no generation replica could answer ({type(exc).__name__})", type="server_error", code="replica_unavailable") from None
                log.warning("generation replica died under request %s; retrying", decided.decision.request_id)
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    async def stream(self, ticket: str, chat: Chat, decided: Decided, options: GenerationOptions) -> AsyncIterator[str]:
        pieces = self.generator.options(stream=True).stream.remote(ticket, chat, decided.decision, options)
        async for piece in pieces:
            yield piece

    async def count_tokens(self, ticket: str, text: str) -> int:
        return await self.generator.count_tokens.remote(ticket, text)

    async def reload(self) -> dict[str, dict[str, Any]]:
        raise APIError(
            501,
            "on Ray Serve, reload by sending SIGHUP to the `eco-guard serve --ray` process (it redeploys with a new user_config)",
            type="invalid_request_error",
            code="reload_via_sighup",
        )


@serve.deployment(name="Ingress", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class IngressDeployment:
    def __init__(
        self, classifier: DeploymentHandle, generator: DeploymentHandle, guards: dict[str, str], config: dict[str, Any],
        api_keys: str | None, trace_content: bool, otel: bool,
    ) -> None:
        from .auth import KeyRing
        from .tracing import Tracing, setup_from_environment

        if otel:
            setup_from_environment()

        self.backend = RayBackend(classifier, generator, list(guards))
        self.config = ServerConfig(**config)
        self.keys = KeyRing(Path(api_keys) if api_keys else None, list(guards))
        self.tracing = Tracing(content=trace_content)

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app

        return create_app(self.backend, self.config, keys=self.keys, tracing=self.tracing)


def build_app(
    guards: dict[str, Path],
    *,
    config: ServerConfig = ServerConfig(),
    audit_path: str | Path | None = None,
    api_keys: Path | None = None,
    classify_replicas: int = 1,
    generate_replicas: int = 1,
    torch_threads: int | None = None,
    trace_content: bool = False,
    otel: bool = False,
    generation: int = 0,
    generate_wait_s: float = 0.1,
) -> Any:
    """The bound Serve application (``serve.run`` it); ``generation`` changes to reload.

    ``generate_wait_s`` is how long a generation batch waits for companions after its first
    row. The plain server's batcher knows which requests are still being classified and
    waits for them (up to 250 ms); a Serve batch cannot see the classifier's queue, so it
    waits a fixed 100 ms by default: closed-loop clients that resend together arrive
    within it and share one generate instead of splitting into several.
    """
    from dataclasses import asdict

    specs = {name: str(Path(d).resolve()) for name, d in guards.items()}
    window = config.batch_window_ms / 1000.0
    threads = torch_threads or max(1, (os.cpu_count() or 1) // generate_replicas)
    user_config = {"generation": generation}
    classifier = ClassifyDeployment.options(num_replicas=classify_replicas, user_config=user_config).bind(
        specs, str(Path(audit_path).resolve()) if audit_path else None, config.max_batch_size, window
    )
    generator = GenerateDeployment.options(num_replicas=generate_replicas, user_config=user_config).bind(
        specs, config.max_batch_size, max(window, generate_wait_s), threads
    )
    return IngressDeployment.bind(classifier, generator, specs, asdict(config), str(api_keys) if api_keys else None, trace_content, otel)


def serve_ray(setup: ServeSetup, *, address: str | None = None, classify_replicas: int = 1, generate_replicas: int = 1) -> None:
    """Start (or join, with ``address``) Ray, deploy, and block; SIGHUP reloads, SIGTERM stops."""
    import ray

    from .auth import KeyRing
    from .run import check_exposure

    keys = KeyRing(setup.api_keys, setup.guards)  # validated here, before any Ray process starts
    check_exposure(setup.host, keys.enabled, setup.allow_unauthenticated)
    ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": setup.host, "port": setup.port})

    def deploy(generation: int) -> None:
        app = build_app(
            setup.guards, config=setup.config, audit_path=setup.audit_path, api_keys=setup.api_keys, classify_replicas=classify_replicas,
            generate_replicas=generate_replicas, trace_content=setup.trace_content, otel=setup.otel, generation=generation,
        )
        serve.run(app, name=APP_NAME, route_prefix="/")

    deploy(0)
    print(f"eco-guard serve --ray: serving {', '.join(setup.guards)} on http://{setup.host}:{setup.port}/v1", file=sys.stderr, flush=True)
    stop = threading.Event()
    generation = [0]
    reload_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    try:
        while not stop.wait(0.2):
            if reload_requested.is_set():
                reload_requested.clear()
                generation[0] += 1
                deploy(generation[0])
                print(f"eco-guard serve --ray: reload {generation[0]} deployed", file=sys.stderr, flush=True)
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
        ray.shutdown()
