"""Fixtures of the classifier tests: the bundled encoder and one small fitted classifier, each built once per session."""

from __future__ import annotations

import pytest

from eco_guard.classifier import Classifier, Encoder, TargetData, TargetFit, resolve_encoder_path

from tests.classifier.texts import FRANCE, FRANCE_RETAIN, PYTHON, PYTHON_RETAIN, TARGET_FPR


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder(resolve_encoder_path("default"))


@pytest.fixture(scope="session")
def targets() -> list[TargetData]:
    return [TargetData("france", FRANCE, FRANCE_RETAIN), TargetData("python-lang", PYTHON, PYTHON_RETAIN)]


@pytest.fixture(scope="session")
def fitted(encoder: Encoder, targets: list[TargetData]) -> tuple[Classifier, list[TargetFit]]:
    return Classifier.fit(encoder, targets, target_fpr=TARGET_FPR, seed=0, progress=False)

