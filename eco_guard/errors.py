"""One exception hierarchy for everything eco-guard raises on purpose.

The CLI and the HTTP server map these to exit code 2 / HTTP 4xx (``UserError``)
or exit code 1 / HTTP 5xx (everything else), so a caller can tell "fix your
input" from "our bug" without parsing messages.
"""

from __future__ import annotations


class EcoGuardError(Exception):
    """Base of all eco-guard errors; ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class UserError(EcoGuardError):
    """Something the user gave us is wrong: fixable by the user, exit code 2."""

    exit_code = 2


class PolicyError(UserError):
    """A policy file (or a file it names) is invalid.

    The message always carries the file and the key path (``targets[0].forget.file``)
    because a compliance author editing YAML needs to know exactly where to look.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ", ".join(p for p in (file, f"key {key}" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


class InputError(UserError):
    """A request or input file is unusable (empty, too long, not UTF-8, ...)."""


class ModelLoadError(UserError):
    """A model or encoder cannot be found or loaded; the message says how to fix it."""


class GuardLoadError(UserError):
    """A fitted-guard directory is missing, incomplete or from an incompatible version."""
