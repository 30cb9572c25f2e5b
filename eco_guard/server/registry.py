"""The guards one server serves, by name, and their live reload.

Each name maps to a :class:`GuardEntry` (the loaded :class:`~eco_guard.guard.Guard`, its
directory and a version: a hash of the directory's files). A request looks its entry up
once and keeps it, so a reload never changes the guard under a request in flight: the
registry swaps in a new mapping atomically, in-flight requests finish on the old entry,
new ones get the new one. A directory that fails to load keeps its old entry serving, and
the failure is reported (log, metric, the reload reply).

Guards whose policies name the same base model (path, device, dtype) share one loaded
runner, and guards writing to the same audit file share one sink, so N policies cost one
model in memory and one file descriptor per file.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audit import AuditSink, JsonlAudit, NullAudit
from ..errors import EcoGuardError, InputError
from ..guard import Guard
from ..runner.base import Runner

log = logging.getLogger("eco_guard.server")


@dataclass(frozen=True)
class GuardEntry:
    """One loaded guard under its served name."""

    name: str
    directory: Path
    guard: Guard
    #: first 12 hex digits of the SHA-256 over the directory's files: names what decided a request
    version: str
    loaded_at: float


def parse_guard_specs(specs: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` or a bare ``DIR`` (named after the directory) -> ``{name: dir}``."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep:
            name, directory = Path(spec).resolve().name, spec
        if not name or not directory:
            raise InputError(f"--guard {spec!r}: expected NAME=DIR or DIR")
        if not all(c.isalnum() or c in "-_." for c in name):
            raise InputError(f"--guard {spec!r}: the name may hold only letters, digits, '-', '_' and '.'")
        if name in out:
            raise InputError(f"--guard {spec!r}: the name {name!r} is given twice")
        out[name] = Path(directory)
    if not out:
        raise InputError("--guard: give at least one guard directory")
    return out


def directory_version(directory: Path) -> str:
    """Hash of every file's relative path and content: changes exactly when the guard does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class _PolicyFacts:
    model_key: tuple[str, str, str]
    audit_path: Path | None
    audit_prompts: str


def _policy_facts(directory: Path) -> _PolicyFacts:
    from ..artifact import read_guard_yaml
    from ..policy import parse_policy

    doc = read_guard_yaml(directory)
    loaded = parse_policy(doc.get("policy"), source=str(directory / "guard.yaml"), base_dir=directory)
    model = loaded.policy.model
    is_path = "/" in model.path or model.path.startswith((".", "~"))
    key = (str(loaded.resolve(model.path)) if is_path else model.path, model.device, model.dtype)
    audit = loaded.policy.audit
    return _PolicyFacts(key, loaded.resolve(audit.path) if audit.path else None, audit.prompts)


class GuardRegistry:
    """Loads, serves and reloads the named guards of one process.

    ``audit_path`` (``--audit``) sends every guard's records to one file; without it each
    guard writes where its policy says. ``audit_path_for`` may rewrite each file's path
    (a Ray replica adds its own id). ``with_runner=False`` never loads a model (a
    classification-only replica); ``audit=False`` writes no audit (a generation-only replica:
    requests are audited where they are decided).
    """

    def __init__(
        self,
        specs: Mapping[str, Path],
        *,
        audit_path: Path | None = None,
        audit_path_for: Callable[[Path], Path] = lambda p: p,
        with_runner: bool = True,
        audit: bool = True,
        runner: Runner | None = None,
        progress: bool = False,
    ) -> None:
        self.specs = dict(specs)
        self._audit_path = audit_path
        self._audit_path_for = audit_path_for
        self._with_runner = with_runner
        self._audit = audit
        self._progress = progress
        self._runners: dict[tuple[str, str, str], Runner] = {}
        #: a runner given by the caller serves every guard (embedding, tests)
        self._given_runner = runner
        self._sinks: dict[tuple[Path, str], AuditSink] = {}
        self._entries: dict[str, GuardEntry] = {}
        self._lock = threading.Lock()
        #: the last reload problem per guard name (None: its last load succeeded)
        self.errors: dict[str, str | None] = {}

    # ------------------------------------------------------------------ loading

    def _sink(self, facts: _PolicyFacts) -> AuditSink:
        if not self._audit:
            return NullAudit()
        if self._audit_path is not None:
            path, prompts = self._audit_path, "hash"
        elif facts.audit_path is not None:
            path, prompts = facts.audit_path, facts.audit_prompts
        else:
            return NullAudit()
        path = self._audit_path_for(Path(path))
        key = (path.resolve(), prompts)
        if key not in self._sinks:
            self._sinks[key] = JsonlAudit(path, prompts)  # type: ignore[arg-type]
        return self._sinks[key]

    def _load(self, name: str, directory: Path) -> GuardEntry:
        if not directory.is_dir():
            raise InputError(f"guard {name!r}: {directory} is not a directory")
        version = directory_version(directory)
        facts = _policy_facts(directory)
        shared = self._given_runner or self._runners.get(facts.model_key)
        guard = Guard.load(directory, runner=shared, audit=self._sink(facts), progress=self._progress)
        guard.name = name
        if self._with_runner and facts.model_key not in self._runners:
            self._runners[facts.model_key] = guard.runner  # loads it now: shared by later guards
        return GuardEntry(name, directory, guard, version, time.time())

    def load_all(self) -> None:
        """Load every guard; any failure is fatal here (nothing old to keep serving)."""
        with self._lock:
            entries = {name: self._load(name, directory) for name, directory in self.specs.items()}
            self._entries = entries
            self.errors = {name: None for name in entries}

    def reload(self) -> dict[str, dict[str, Any]]:
        """Reload every guard whose directory changed; swap all successes in at once.

        Returns per guard ``{"status": "reloaded" | "unchanged" | "failed", "version", "error"}``.
        """
        with self._lock:
            current = dict(self._entries)
            report: dict[str, dict[str, Any]] = {}
            for name, directory in self.specs.items():
                old = current[name]
                try:
                    if directory_version(directory) == old.version:
                        report[name] = {"status": "unchanged", "version": old.version, "error": None}
                        self.errors[name] = None
                        continue
                    new = self._load(name, directory)
                except (EcoGuardError, OSError, ValueError, KeyError, TypeError) as exc:
                    why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, EcoGuardError) else str(exc)
                    log.error("reload of guard %r failed; the old guard (version %s) keeps serving: %s", name, old.version, why)
                    report[name] = {"status": "failed", "version": old.version, "error": why}
                    self.errors[name] = why
                    continue
                current[name] = new
                self.errors[name] = None
                log.info("guard %r reloaded: version %s -> %s", name, old.version, new.version)
                report[name] = {"status": "reloaded", "version": new.version, "error": None}
            self._entries = current  # one assignment: readers see the old or the new mapping
        return report

    # ------------------------------------------------------------------ serving

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str) -> GuardEntry | None:
        return self._entries.get(name)

    def entries(self) -> list[GuardEntry]:
        return list(self._entries.values())

    def close(self) -> None:
        """Close the audit files (after the server has drained)."""
        for sink in self._sinks.values():
            sink.close()
