"""The policies shown to users must be policies eco-guard accepts.

A README example that no longer validates is the first thing a new user hits, so every
YAML block that starts with ``version:`` in the README and docs/ is parsed by the same
validation ``eco-guard fit`` runs (file references are not opened: validation is
structural), and the README's first policy is also shipped as an example file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from eco_guard.policy import parse_policy

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _policy_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOCS:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), re.S)):
            if block.lstrip().startswith("version:"):
                blocks.append((f"{path.name}#{i}", block))
    return blocks


@pytest.mark.parametrize(("where", "block"), _policy_blocks(), ids=[w for w, _ in _policy_blocks()])
def test_documented_policies_validate(where: str, block: str) -> None:
    loaded = parse_policy(yaml.safe_load(block), source=where, base_dir=ROOT)
    assert loaded.policy.targets, where


def test_readme_first_policy_is_the_shipped_example() -> None:
    first = re.search(r"Save this as `policy.yaml`:\n\n```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert first is not None, "the README's first-policy block moved; update this test"
    shipped = yaml.safe_load((ROOT / "examples" / "forget_einstein.yaml").read_text())
    assert yaml.safe_load(first.group(1)) == shipped
