"""Generic everyday prompts used as negatives when a policy gives only a few examples.

A head trained on "forget examples vs. the handful of retain examples" learns whatever
separates those two small sets, and often flags unrelated traffic. Mixing in a broad
sample of ordinary prompts (written for this project, one per line in
``background.txt``) teaches each head what "not this target" looks like, and half of
it serves as held-out calibration negatives for the conformal threshold.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


def background_prompts() -> list[str]:
    """The packaged background corpus; the file is read once per process.

    Callers get a fresh list each time so that mutating it cannot change what the
    next fit sees.
    """
    return list(_load())


@cache
def _load() -> tuple[str, ...]:
    """Read and cache the corpus as an immutable tuple; blank lines are ignored."""
    text = resources.files(__package__).joinpath("background.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
