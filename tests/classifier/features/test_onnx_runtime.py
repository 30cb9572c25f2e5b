"""The encoder run by ONNX Runtime: same features as PyTorch, its export cached, and its fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eco_guard.classifier import Encoder, resolve_encoder_path
from eco_guard.errors import InputError, ModelLoadError


def test_onnx_runtime_gives_pytorch_features(encoder: Encoder) -> None:
    # The default encoder runs in ONNX Runtime; PyTorch is the reference it must match.
    assert encoder.runtime == "onnx"
    reference = Encoder(resolve_encoder_path("default"), runtime="torch")
    assert reference.runtime == "torch"
    texts = ["Who wrote 'The Village That Vanished'?", "hi", "word " * 300, "Was ist die Hauptstadt von Frankreich?"]
    np.testing.assert_allclose(encoder.features(texts), reference.features(texts), atol=1e-5)
    np.testing.assert_allclose(encoder.encode(texts), reference.encode(texts), atol=1e-5)


def test_onnx_export_is_cached_per_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    first = Encoder(resolve_encoder_path("default"), runtime="onnx")
    exported = list(tmp_path.glob("encoders/*/backbone.onnx"))
    assert len(exported) == 1 and first.runtime == "onnx"
    stamp = exported[0].stat().st_mtime_ns
    Encoder(resolve_encoder_path("default"), runtime="onnx")
    assert exported[0].stat().st_mtime_ns == stamp  # reused, not exported again
    assert not list(tmp_path.glob("encoders/*/*.tmp"))  # no half-written leftovers


def test_runtime_choices_are_checked() -> None:
    path = resolve_encoder_path("default")
    with pytest.raises(InputError, match="runtime must be auto, torch or onnx"):
        Encoder(path, runtime="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="runtime onnx is for CPU float32 only"):
        Encoder(path, precision="bfloat16", runtime="onnx")
    assert Encoder(path, precision="bfloat16").runtime == "torch"  # auto: bfloat16 runs under PyTorch autocast


def test_auto_runtime_falls_back_to_pytorch_with_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys as _sys

    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    monkeypatch.setitem(_sys.modules, "onnxruntime", None)  # as if the package were not installed
    with pytest.warns(UserWarning, match="running in PyTorch, not ONNX Runtime.*onnxruntime"):
        fallback = Encoder(resolve_encoder_path("default"))
    assert fallback.runtime == "torch" and fallback.features(["still works"]).shape == (1, fallback.feature_dim)
    with pytest.raises(ModelLoadError, match="onnxruntime"):
        Encoder(resolve_encoder_path("default"), runtime="onnx")


def test_damaged_onnx_cache_entry_is_exported_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    reference = Encoder(resolve_encoder_path("default"), runtime="onnx")
    (exported,) = tmp_path.glob("encoders/*/backbone.onnx")
    exported.write_bytes(b"\x00truncated")
    repaired = Encoder(resolve_encoder_path("default"), runtime="onnx")
    assert exported.stat().st_size > 1_000_000
    np.testing.assert_array_equal(repaired.features(["a question"]), reference.features(["a question"]))

