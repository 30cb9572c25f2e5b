"""Every text of a fit embedded once, keeping its row across the fit's steps."""

from __future__ import annotations

import numpy as np
import pytest

from eco_guard.classifier import Encoder
from eco_guard.classifier.features.embedded import Embedded


def test_embedded_texts_keep_their_rows_across_steps(encoder: Encoder) -> None:
    """A fit embeds in steps (corpus, examples, copies); every text keeps the features it was first given."""
    embedded = Embedded(encoder, progress=False)
    embedded.add_corpus(["How do I bake bread?", "Explain photosynthesis.", "How do I bake bread?"], cached=False)
    embedded.add(["What is the capital of France?", "Explain photosynthesis.", "  "])
    embedded.add([])
    texts = ["What is the capital of France?", "How do I bake bread?", "Explain photosynthesis."]
    np.testing.assert_allclose(embedded.matrix(texts), encoder.features(texts), rtol=1e-5, atol=1e-6)
    embedded.add(["Who was Napoleon?"])
    np.testing.assert_allclose(embedded.matrix(["Who was Napoleon?", texts[0]]), encoder.features(["Who was Napoleon?", texts[0]]), rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError):
        embedded.matrix(["never added"])

