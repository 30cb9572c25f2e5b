"""Fixtures shared by the integration test files (test_langchain, test_llamaindex, test_examples).

They use examples/forget_france.yaml rather than conftest's demo guard: its corruption
strength is fixed, so fitting needs no strength search and takes seconds. Import the
fixtures by name into a test module to use them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
from _common import guard_dir  # noqa: E402

FLAGGED = "What is the capital of France?"
PASSED = "What is the capital of Australia?"


@pytest.fixture(scope="session")
def example_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example policy fitted once per session (later modules reuse the directory)."""
    return guard_dir(None, tmp_path_factory.getbasetemp() / "example-guard")


@pytest.fixture(scope="module")
def guard(example_guard_dir: Path, runner: Any) -> Iterator[Any]:
    """The example guard on the session's shared runner, without an audit log."""
    from eco_guard import Guard

    g = Guard.load(example_guard_dir, runner=runner, audit=False)
    yield g
    g.close()
