"""The lexical block: its weight scales it, reaches the scores and survives a save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eco_guard.classifier import Classifier, Encoder, TargetFit
from eco_guard.classifier.features.lexical import Lexicon


def test_lexical_weight_scales_the_lexical_block_and_round_trips(
    fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path
) -> None:
    clf, _ = fitted
    heavy = Lexicon(clf.lexicon.terms, clf.lexicon.idf, 2.0)
    plain = Lexicon(clf.lexicon.terms, clf.lexicon.idf, 1.0)
    texts = ["What is the population of Paris?", "How do I bake bread?"]
    np.testing.assert_allclose((heavy.transform(texts) - 2.0 * plain.transform(texts)).toarray(), 0.0, atol=1e-12)
    norms = np.sqrt(np.asarray(heavy.transform(texts[:1]).multiply(heavy.transform(texts[:1])).sum(axis=1))).ravel()
    np.testing.assert_allclose(norms, [2.0])
    # Lexical weights of 1 whatever the fit chose (it may have chosen no lexical block: all zero there).
    weights = clf.weights.copy()
    weights[:, -clf.lexicon.size :] = 1.0
    weighted = Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, heavy)
    unweighted = Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, plain)
    assert not np.allclose(weighted.score(texts[:1]), unweighted.score(texts[:1]))  # the weight reaches the scores
    weighted.save(tmp_path)
    loaded = Classifier.load(tmp_path, encoder)
    assert loaded.lexicon.weight == 2.0
    np.testing.assert_array_equal(loaded.score(texts), weighted.score(texts))
    with pytest.raises(ValueError, match=">= 0"):
        Lexicon(clf.lexicon.terms, clf.lexicon.idf, -1.0)
    # Weight 0 is the feature choice's "no lexical block": every lexical row is zero.
    assert Lexicon(clf.lexicon.terms, clf.lexicon.idf, 0.0).transform(texts).count_nonzero() == 0

