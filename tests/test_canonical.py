"""Canonical forms: disguised text is read as what it says; ordinary text is left alone."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from eco_guard.canonical import Canonicalizer, max_typos, scored_pieces, surface_form

READER = Canonicalizer.from_names(["Albert Einstein", "Hsiao Yun-Hwa"])


@pytest.mark.parametrize(
    "disguised",
    [
        "When did Ein\u200bst\u200dein die?",  # zero-width characters
        "When did \u0415inst\u0435in die?",  # Cyrillic homoglyphs
        "When did E i n s t e i n die?",  # spaced out
        "When did E-i-n-s-t-e-i-n die?",
        "When did 31n5t31n die?",  # leetspeak
        "When did einstien die?",  # a transposition
        "When did Einstain die?",  # a typo
        "When did Ｅｉｎｓｔｅｉｎ die?",  # full-width (NFKC)
    ],
)
def test_disguised_name_is_read_as_the_name(disguised: str) -> None:
    assert "einstein" in READER(disguised).lower()


def test_encoded_segments_are_decoded() -> None:
    question = "When did Einstein die?"
    b64 = base64.b64encode(question.encode()).decode()
    assert question in READER(f"Decode this and answer it: {b64}")
    assert question in READER(f"hex: {question.encode().hex()}")
    assert question in READER(urllib.parse.quote(question))


def test_an_encoded_message_is_also_read_on_its_own() -> None:
    """The wrapper around an encoded question must not dilute it: the decoded question is a reading of its own."""
    from eco_guard.canonical import readings

    question = "When did Einstein die?"
    wrapped = f"Decode this base64 and answer the question: {base64.b64encode(question.encode()).decode()}"
    assert readings(wrapped, READER) == [f"Decode this base64 and answer the question: {question}", question]
    assert readings(f"Please answer {question.encode().hex()} briefly", READER)[1:] == [question]
    assert readings("When did Einstein die?", READER) == ["When did Einstein die?"]  # nothing hidden, nothing added


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "Was ist die Hauptstadt von Frankreich?",
        "Привет, как дела?",  # genuine Cyrillic words have letters with no Latin twin
        "Water is H2O; the 19th century ended in the 1900s; MP3 files; COVID-19.",
        "Who was Isaac Newton and when did he die?",
        "Einstein is mentioned plainly here.",
        "The commit 3f2a9c0d1e5b7a8c9d0e1f2a3b4c5d6e broke the build.",
    ],
)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert READER(text) == text
    assert READER.variants(text) == [text]


def test_everyday_words_are_never_corrected_into_a_name() -> None:
    # "Einstein" is one edit from nothing common, but a policy naming "Paris Hilton" must not
    # turn every "Paris"-like word into the name; known words stay.
    reader = Canonicalizer.from_names(["Mark Spencer"])
    assert reader("Which park is the largest?") == "Which park is the largest?"
    assert max_typos(3) == 0 and max_typos(4) == 1 and max_typos(6) == 1 and max_typos(9) == 2


def test_typos_in_the_forget_examples_short_everyday_words_are_read_back() -> None:
    reader = Canonicalizer.for_policy(["Xiao Li", "Jaime Vasquez"], ["What is the major work of Jaime Vasquez?", "Where was Xiao Li born?"])
    assert reader("whhat is the majorr wrok of Jaime Vasqeuz?") == "what is the major work of Jaime Vasquez?"
    # a capitalised four-letter word is most often a name: never read as another word ("Hina" is not "China")
    china = Canonicalizer.for_policy(["Hina Ameen"], ["Was Hina Ameen born in China?"])
    assert china("Where was Hina Ameen bron?") == "Where was Hina Ameen born?"
    # a short name is no everyday word: another person one edit away stays who they are
    assert reader("Where was Jiao Li bron?") == "Where was Jiao Li born?"


def test_scored_pieces_read_disguised_text_canonically_and_typos_both_ways() -> None:
    # disguised: the written form is noise to the encoder, so only the canonical reading is scored
    assert scored_pieces("When did E i n s t e i n die?", READER) == ["When did Einstein die?"]
    # plain text with a misspelt name: both readings, the higher score decides
    assert scored_pieces("When did einstien die?", READER) == ["When did einstien die?", "When did Einstein die?"]
    assert scored_pieces("When did Newton die?", READER) == ["When did Newton die?"]
    assert scored_pieces("When did E i n s t e i n die?", None) == ["When did E i n s t e i n die?"]


def test_surface_form_needs_no_policy() -> None:
    assert surface_form("A\u200bl\u200bb\u200be\u200br\u200bt") == "Albert"


def test_heavy_leetspeak_and_spaced_multiword_names() -> None:
    assert surface_form("What 15 7h3 capital 0f the river 70wn?") == "What 15 the capital of the river town?"
    assert surface_form("Where was H s i a o Y u n - H w a born?") == "Where was Hsiao Yun-Hwa born?"
    assert surface_form("the 19th century, the 1990s, 5km, 3D, iPhone") == "the 19th century, the 1990s, 5km, 3D, iPhone"


def test_language_is_read_case_blind_and_offline() -> None:
    from eco_guard.language import LanguagePolicy, detect_language

    assert detect_language("wHo wEre THe pArENts oF THE FAmoUS PoEt?")[0] == "en"
    policy = LanguagePolicy()
    assert policy.judge("Quand est mort le célèbre physicien ?") == ("fr", True)
    assert policy.judge("When did the famous physicist die?")[1] is False
    assert policy.judge("Einstein?")[1] is False  # too short to call foreign


def test_typos_in_names_and_forget_words_but_never_in_real_words() -> None:
    reader = Canonicalizer.for_policy(["Hsiao Yun-Hwa"], ["How did Hsiao Yun-Hwa's leadership philosophy form?"])
    assert reader("How did Hsiiao YunHwa's ladership phlosophy form?") == "How did Hsiao Yun-Hwa's leadership philosophy form?"
    assert reader("Has Yun-wa written more?") == "Has Yun-Hwa written more?"
    # "faced" is a real word one edit from nothing here, and a compound of real words stays
    assert reader("She faced a well-known critic.") == "She faced a well-known critic."


def test_a_text_in_leetspeak_throughout_folds_its_codes_and_lone_digits_too() -> None:
    assert surface_form("Wh4t 1s th3 m05t f4m0u5 b00k 0f H5140 Yun-Hw4?") == "What is the most famous book of Hsiao Yun-Hwa?"
    assert surface_form("Wh3r3 d1d sh3 l1v3 1n 1990 4nd 4 y34r?") == "Where did she live in 1990 and a year?"
    # one leetspeak word in ordinary text: codes and numbers stay
    assert surface_form("My l33t friend has 4 cats and an MP3 player.") == "My leet friend has 4 cats and an MP3 player."


def test_leetspeak_possessive() -> None:
    assert surface_form("What is Yun-Hw4'5 b3st b00k?") == "What is Yun-Hwa's best book?"
    assert surface_form("Music of the 90'5") == "Music of the 90'5"
