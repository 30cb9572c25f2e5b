"""eco-guard's on-disk cache: where it lives, and removing entries nothing can use any more.

Three things are cached, each once per source: the bundled GGUF converted to safetensors
(``models/``, ~500 MB), the encoder exported to ONNX (``encoders/``, ~90 MB) and the
built-in corpora's encoder features (``features/``, a few tens of MB). Entries are keyed
by their source's path, size and mtime, because hashing weights on every start would cost
more than the load saved. So every reinstall or new virtual environment makes new entries,
and without pruning the old ones pile up: fifteen fresh clones had left 5 GB of stale model
conversions in one developer's cache.

Every entry is a directory holding a marker (:data:`ENTRY_MARKER`) that names its source
and the source's identity when the entry was made. :func:`prune_superseded`, called after a
new entry is written, removes the siblings whose source is gone or has changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

ENTRY_MARKER = "eco_guard_model.json"
"""File in every cache entry directory naming the source it was made from and that source's identity."""


def cache_dir() -> Path:
    """Root of eco-guard's cache: ``$ECO_GUARD_CACHE`` or ``~/.cache/eco-guard``."""
    env = os.environ.get("ECO_GUARD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eco-guard"


def write_entry_marker(entry: Path, source: Path, identity: str) -> None:
    """Record in ``entry`` the source it was made from and the source's ``identity`` (sizes, mtimes)."""
    marker = {"source": str(source.resolve()), "identity": identity}
    (entry / ENTRY_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def prune_superseded(entry: Path, source: Path, identity: str) -> list[Path]:
    """Delete the sibling entries of ``entry`` that nothing can use any more; return them.

    A sibling goes when its marker names a source that no longer exists (its environment
    was deleted), or this same source with another identity (the file was replaced, so
    what was made from it is stale). Siblings made from this source as it is now stay:
    they may differ in what was made (another precision or runtime of the same encoder).
    Directories without a readable marker are not ours to judge and stay too.
    """
    removed: list[Path] = []
    mine = str(source.resolve())
    for sibling in entry.parent.iterdir():
        if sibling == entry or not sibling.is_dir() or sibling.name.startswith("."):
            continue
        try:
            marker = json.loads((sibling / ENTRY_MARKER).read_text(encoding="utf-8"))
            recorded = marker["source"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(recorded, str):
            continue
        gone = recorded != mine and not Path(recorded).exists()
        replaced = recorded == mine and marker.get("identity") != identity
        if gone or replaced:
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def model_files_identity(model_dir: Path) -> list[str]:
    """The model directory's path and every file's name, size and mtime.

    Hashing the weights on every start would cost more than the load; a reinstalled
    package changes sizes or mtimes, which invalidates anything keyed on this.
    """
    parts = [str(model_dir.resolve())]
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            st = path.stat()
            parts.append(f"{path.relative_to(model_dir)}|{st.st_size}|{st.st_mtime_ns}")
    return parts


def model_files_key(model_dir: Path) -> str:
    """:func:`model_files_identity` as one short hash: what cache entries record as their source's identity."""
    return digest(model_files_identity(model_dir))[:16]


def digest(parts: list[str]) -> str:
    """SHA-256 of ``parts``, each ended by a NUL so that ``["ab", "c"]`` and ``["a", "bc"]`` differ."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()
