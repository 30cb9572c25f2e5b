"""API keys: who may call the server, and which guards each caller may use.

Keys are never stored: the keys file holds each key's SHA-256 (hex), and a request's
bearer key is hashed and compared with every stored hash with ``hmac.compare_digest``
(constant time, and every entry is compared, so timing says nothing about which one
matched). Only a key's *name* ever reaches a log, an audit line or a metric.

Keys file (``eco-guard serve --api-keys FILE``)::

    keys:
      - {name: team-a, key_sha256: <hex sha256 of the key>, guards: [hr, legal]}
      - {name: ops, key_sha256: <hex>, guards: ["*"], admin: true}

``guards: ["*"]`` allows every guard; ``admin: true`` may also call the reload endpoint.
The environment can add one key: ``ECO_GUARD_API_KEY`` (the key itself, named ``env``,
every guard, admin), for containers that receive secrets as variables.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InputError

ENV_KEY = "ECO_GUARD_API_KEY"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the key's name and what it may do."""

    name: str
    guards: frozenset[str]
    admin: bool = False

    def may_use(self, guard: str) -> bool:
        return "*" in self.guards or guard in self.guards


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    digest: str


def key_sha256(key: str) -> str:
    """The hex SHA-256 a keys file stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_keys(doc: object, *, source: str, guards: Iterable[str]) -> list[_Entry]:
    """Validate a keys document; every problem names the file and the entry."""
    known = set(guards)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise InputError(f"{source}: expected a mapping with a 'keys' list")
    entries: list[_Entry] = []
    names: set[str] = set()
    for i, item in enumerate(doc["keys"]):
        where = f"{source}: keys[{i}]"
        if not isinstance(item, Mapping):
            raise InputError(f"{where}: expected a mapping with name, key_sha256 and guards")
        unknown = set(item) - {"name", "key_sha256", "guards", "admin"}
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        name, digest, allowed = item.get("name"), item.get("key_sha256"), item.get("guards")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}.name: expected a non-empty string")
        if name in names:
            raise InputError(f"{where}.name: {name!r} is used twice")
        names.add(name)
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            raise InputError(f"{where}.key_sha256: expected 64 hex digits (the SHA-256 of the key, not the key)")
        if not isinstance(allowed, list) or not allowed or not all(isinstance(g, str) for g in allowed):
            raise InputError(f"{where}.guards: expected a non-empty list of guard names (or [\"*\"])")
        missing = [g for g in allowed if g != "*" and g not in known]
        if missing:
            raise InputError(f"{where}.guards: no guard named {', '.join(map(repr, missing))}; served guards: {', '.join(sorted(known))}")
        admin = item.get("admin", False)
        if not isinstance(admin, bool):
            raise InputError(f"{where}.admin: expected true or false")
        entries.append(_Entry(Principal(name, frozenset(allowed), admin), digest.lower()))
    return entries


class KeyRing:
    """The accepted keys; re-read on reload (a broken file keeps the old keys)."""

    def __init__(self, path: Path | None, guards: Iterable[str], *, environ: Mapping[str, str] = os.environ) -> None:
        self.path = path
        self._guards = list(guards)
        self._environ = environ
        self._lock = threading.Lock()
        self._entries = self._read()
        if not self._entries and path is not None:
            raise InputError(f"{path}: no keys; add at least one, or serve without --api-keys")

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def _read(self) -> list[_Entry]:
        entries: list[_Entry] = []
        if self.path is not None:
            try:
                doc = yaml.safe_load(Path(self.path).read_text(encoding="utf-8"))
            except OSError as exc:
                raise InputError(f"{self.path}: cannot read the keys file ({exc.strerror or exc})") from exc
            except yaml.YAMLError as exc:
                raise InputError(f"{self.path}: not valid YAML ({exc})") from exc
            entries = parse_keys(doc, source=str(self.path), guards=self._guards)
        env_key = self._environ.get(ENV_KEY, "")
        if env_key:
            if any(e.principal.name == "env" for e in entries):
                raise InputError(f"{self.path}: the name 'env' is reserved for the {ENV_KEY} key")
            entries.append(_Entry(Principal("env", frozenset({"*"}), admin=True), key_sha256(env_key)))
        return entries

    def reload(self) -> str | None:
        """Re-read the keys file; on any problem keep the current keys and return why."""
        try:
            entries = self._read()
            if not entries:
                raise InputError(f"{self.path}: no keys")
        except InputError as exc:
            return str(exc)
        with self._lock:
            self._entries = entries
        return None

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller of an ``Authorization: Bearer <key>`` header, or None (no or unknown key)."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest = key_sha256(key.strip())
        found: Principal | None = None
        for entry in self._entries:  # all compared: no early exit that timing could reveal
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        return found
