"""What the HTTP routes need from whatever runs the guards.

The routes (:mod:`.app`) translate HTTP; a backend decides, audits and answers. Two
backends implement this protocol: :class:`~eco_guard.server.service.GuardService` in the
server's own process (micro-batchers over :class:`~eco_guard.guard.Guard`), and
:class:`~eco_guard.server.ray_app.RayBackend`, whose work runs in Ray Serve deployments.
Either way the work is done by ``Guard``'s public methods, never by reaching into a runner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..decision import Decision
from ..decision import DecidedAnswer
from ..runner.base import GenerationOptions

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class Decided:
    """A decision and which guard (name and version) made it; answers follow that guard."""

    decision: Decision
    guard: str
    version: str


class Backend(Protocol):
    """The guard work behind the routes. A *ticket* (from :meth:`pin`) names the guard a
    request was admitted to; every later stage of that request uses the same ticket, so a
    reload never switches guards under a request in flight."""

    def names(self) -> list[str]: ...

    def pin(self, guard: str) -> Any | None:
        """The ticket for ``guard``, or None when no such guard is served."""

    def health(self) -> dict[str, Any]: ...

    def start(self) -> None: ...

    async def drain(self) -> None: ...

    async def prompt_tokens(self, ticket: Any, chat: Chat, options: GenerationOptions) -> int:
        """Validate a chat for generation (raises ``InputError``); its prompt's token count."""

    async def decide(self, ticket: Any, chats: list[Chat], kind: str, key: str | None) -> list[Decided]:
        """Decide and audit (the line names the key's name, never the key)."""

    async def answer(self, ticket: Any, chat: Chat, decided: Decided, options: GenerationOptions) -> DecidedAnswer: ...

    def stream(self, ticket: Any, chat: Chat, decided: Decided, options: GenerationOptions) -> AsyncIterator[str]: ...

    async def count_tokens(self, ticket: Any, text: str) -> int: ...

    async def reload(self) -> dict[str, dict[str, Any]]:
        """Reload changed guard directories; per guard: status, version, error."""
