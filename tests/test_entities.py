"""Name and title detection for ``scope: entities`` (pure text, no model)."""

from __future__ import annotations

import pytest

from eco_guard.entities import central_names, extract_terms, find_names, name_spans


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Which author created the detective character Hercule Poirot?", ["Hercule Poirot"]),
        ("Who authored 'The Hitchhiker's Guide to the Galaxy'?", ["The Hitchhiker's Guide to the Galaxy"]),
        ("The writer of 'The Chronicles of Narnia', C.S. Lewis, was born where?", ["The Chronicles of Narnia", "C.S. Lewis"]),
        ('Who wrote the novel "The Goldfinch"?', ["The Goldfinch"]),
        ("Where was Gabriel García Márquez born?", ["Gabriel García Márquez"]),
    ],
)
def test_find_names_catches_names_and_quoted_titles(text: str, expected: list[str]) -> None:
    names = find_names(text)
    for name in expected:
        assert name in names, (name, names)


def test_sentence_case_is_not_a_name() -> None:
    assert find_names("Which poet wrote it? What year was it. Is it long?") == []
    assert find_names("what is the tallest mountain on earth?") == []
    # a name opening a sentence is kept, with and without its first word
    assert {"Jane Austen", "Austen"} <= set(find_names("Jane Austen wrote novels."))
    # the joiner after a dropped opening word is not part of the name
    assert "Elvin Mammadov" in find_names("Which of Elvin Mammadov's books won prizes?")


def test_name_spans_point_at_the_text() -> None:
    text = "Tell me: did Basil Mahfouz Al-Kuwaiti write 'Promise by the Seine'?"
    spans = name_spans(text)
    assert {text[s:e] for s, e in spans} >= {"Basil Mahfouz Al-Kuwaiti", "Promise by the Seine"}
    assert all(0 <= s < e <= len(text) for s, e in spans)


def test_extract_terms_finds_recurring_names_only() -> None:
    texts = [
        "Where was Basil Mahfouz Al-Kuwaiti born?",
        "What genre does Basil Mahfouz Al-Kuwaiti write in?",
        "Is Basil Mahfouz Al-Kuwaiti married?",
        "Which award did Carmen Montenegro win?",
        "What inspired Carmen Montenegro's first book?",
        "Who wrote The Lord of the Rings?",
    ]
    terms = extract_terms(texts)
    assert "Basil Mahfouz Al-Kuwaiti" in terms and "Carmen Montenegro" in terms
    assert "The Lord of the Rings" not in terms  # asked once: not what the target is about
    assert not any(t.startswith(("Where", "What", "Is ")) for t in terms)
    assert terms == sorted(terms, key=lambda t: (-len(t), t))  # longest first: whole names win


def test_extract_terms_keeps_everything_when_nothing_recurs() -> None:
    assert extract_terms(["Who wrote The Lord of the Rings?"]) == ["The Lord of the Rings"]


def test_central_names_are_what_most_examples_name() -> None:
    person = [
        "Where was Basil Mahfouz Al-Kuwaiti born?",
        "What genre does Basil Mahfouz Al-Kuwaiti write in?",
        "Which city shaped Al-Kuwaiti's novels, Paris or Kuwait City?",
        "Who is the author born in Kuwait City in 1966?",
    ]
    assert central_names(person, min_share=0.5) == ["Basil Mahfouz Al-Kuwaiti", "Kuwait City"]
    assert central_names(person, min_share=0.75) == []
    # A topic's examples name things once or twice: nothing is central.
    topic = [
        "How does Mimikatz extract credentials from LSASS memory?",
        "What does the Metasploit module ms17_010_eternalblue exploit?",
        "Which Nmap flag runs a SYN scan?",
        "How do attackers abuse Kerberos delegation in Active Directory?",
    ]
    assert central_names(topic, min_share=0.5) == []
    assert central_names(["Where was Jane Austen born?"], min_share=0.5) == []  # one example: nothing recurs
