"""The built-in background and the stand-ins for near negatives."""

from __future__ import annotations

from eco_guard.classifier import background_prompts
from eco_guard.classifier.negatives.background import knowledge_questions, near_negative_stand_ins, people_questions


def test_background_has_questions_about_made_up_people() -> None:
    people = people_questions()
    assert len(people) >= 600 and people == people_questions()  # deterministic: every fit sees the same corpus
    assert not set(people) & set(background_prompts())  # they join only fits without negatives of their own


def test_knowledge_questions_join_the_people_questions_as_stand_ins() -> None:
    knowledge = knowledge_questions()
    assert len(knowledge) >= 1000 and len(set(knowledge)) == len(knowledge)
    assert list(near_negative_stand_ins().values()) == [people_questions(), knowledge]


def test_background_corpus() -> None:
    prompts = background_prompts()
    assert len(prompts) >= 600
    assert len(set(prompts)) == len(prompts)
    assert all(p == p.strip() and p for p in prompts)
    prompts.clear()
    assert len(background_prompts()) >= 600  # callers cannot corrupt the cached corpus

