"""What the integration examples share: a guard to run against, and their command line.

Each example either uses ``--guard DIR`` (a directory from ``eco-guard fit``) or fits
``forget_france.yaml`` into a temporary directory itself. That policy fixes the
corruption strength, so fitting takes seconds (only the classifier is trained).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXAMPLE_POLICY = Path(__file__).with_name("forget_france.yaml")

#: The knowledge base of the RAG examples: two passages about France among others.
DOCUMENTS = [
    "Canberra is the capital city of Australia. It was chosen as a compromise between Sydney and Melbourne.",
    "Australia's longest river is the Murray River, which flows for about 2,500 km.",
    "Paris is the capital of France, and the Seine flows through the city.",
    "The Eiffel Tower in Paris was built for the 1889 World's Fair.",
    "Japan's capital is Tokyo, one of the most populous cities in the world.",
    "The Amazon river in South America carries more water than any other river.",
]

#: One question that passes, one about the forget target.
QUESTIONS = ["What is the capital of Australia?", "What is the capital of France?"]


def parser(description: str) -> argparse.ArgumentParser:
    """The options every example takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--guard", type=Path, help="a fitted-guard directory (default: fit forget_france.yaml into a temp dir)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="most tokens in one local answer")
    return p


def guard_dir(given: Path | None, work: Path) -> Path:
    """``given`` as is, or the example policy fitted into ``work/guard`` (reused if present)."""
    if given is not None:
        return given
    from eco_guard.fitting import fit_guard

    out = work / "guard"
    if not (out / "guard.yaml").is_file():
        work.mkdir(parents=True, exist_ok=True)
        policy = work / EXAMPLE_POLICY.name
        shutil.copyfile(EXAMPLE_POLICY, policy)  # the audit log is written next to the policy
        fit_guard(policy, out, seed=0, progress=False)
    return out
