"""Generic negatives every head trains against, and half of which calibrate the threshold.

A head trained on "forget examples vs. the handful of retain examples" learns whatever
separates those two small sets, and often flags unrelated traffic. Mixing in a broad
sample of ordinary prompts teaches each head what "not this target" looks like, and half
of it serves as held-out calibration negatives for the conformal threshold.

Three parts, all this project's own: everyday chat prompts (``background.txt``, one per
line, :func:`background_prompts`), always; and two stand-ins for the near negatives a
policy may not give (:func:`near_negative_stand_ins`): questions about made-up people
built from the templates below (:func:`people_questions`) and exam-style knowledge
questions over 76 subjects (``knowledge_questions.txt``, :func:`knowledge_questions`).
The same made-up names also rewrite a policy's own examples about someone else
(:func:`name_swapped`, used by :mod:`eco_guard.classifier.negatives.swaps`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache
from importlib import resources

from eco_guard.entities import names_pattern

_FIRST = """Amara Bao Carlos Dana Elif Farid Greta Hiroshi Ines Jonas Kavya Leon Mei Nikolai Olu Priya Quentin
Rosa Sven Tamar Umar Vera Wen Ximena Yusuf Zofia Aiko Bruno Chiara Dmitri Esther Femi Goran Hana Ivan Jia Kofi
Lucia Mateo Nadia Oskar Paulo Rania Stefan Thandiwe Valentina Wojciech Yara""".split()
_LAST = """Abara Borisov Castillo Dahl Eriksen Fontaine Gupta Haddad Ivanova Jansen Kim Lindqvist Moreau
Nakamura Okafor Petrova Quiroga Rossi Silva Takahashi Urquhart Varga Weiss Xu Yilmaz Zeller Achebe Bianchi
Chen Dubois Estrada Fischer Garcia Horvat Ibrahim Jovanovic Kowalski Lopez Mensah Novak Ortiz Park Rahman
Schmidt Tanaka Ueda Vasquez Wang""".split()
_PLACES = """Nigeria Brazil Japan Norway Egypt Canada India Mexico Poland Kenya Chile Turkey Vietnam Ireland
Argentina Ghana Sweden Portugal Korea Peru""".split()
_WORKS = {
    "novelist": "novel", "poet": "poem", "painter": "painting", "composer": "symphony", "physicist": "paper",
    "chemist": "discovery", "biologist": "study", "architect": "building", "film director": "film",
    "playwright": "play", "journalist": "article", "historian": "book", "philosopher": "book",
    "economist": "book", "sculptor": "sculpture", "photographer": "exhibition", "engineer": "invention",
    "mathematician": "theorem", "chef": "restaurant", "singer": "album",
}  # fmt: skip
"""Roles of the made-up people, and what each one makes."""
_PERSON_QUESTIONS = """Where was {name} born?
When was {name} born?
What is {name} best known for?
What was {name}'s first {work}?
Which awards has {name} received?
Who were {name}'s parents, and what did they do?
How did {name}'s childhood in {place} shape their {work}s?
What themes run through {name}'s {work}s?
Who influenced {name} the most?
Is {name} married, and to whom?
What did {name} study before becoming a {role}?
Which {work} by {name} was the most successful?
How did critics receive {name}'s latest {work}?
What is the title of {name}'s most famous {work}?
Does {name} have any children?
Where does {name} live now?
How old was {name} when they started working as a {role}?
What language does {name} work in?
Which {work} made {name} famous in {place}?
What is {name}'s full name?
How would you describe {name}'s style?
What controversies has {name} been involved in?
Has {name} collaborated with other artists?
What is {name} working on at the moment?
Why did {name} move away from {place}?
What do readers admire most about {name}'s {work}s?
Can you summarise the life of the {role} {name}?
Tell me about {name}'s early career.
Which prizes did {name} win for their {work}s?
What was the turning point in {name}'s career?""".splitlines()
_PEOPLE = 200
_QUESTIONS_PER_PERSON = 4


def background_prompts() -> list[str]:
    """The written background prompts, distinct, in file order; the file is read once per process.

    Callers get a fresh list each time so that mutating it cannot change what the
    next fit sees.
    """
    return list(_load("background.txt"))


def knowledge_questions() -> list[str]:
    """Exam-style and knowledge questions written for this project: sciences, humanities, law, business, applied fields.

    Chat prompts alone taught a topic head "exam question vs. chat": fitted on 20 WMDP
    questions, the bio head flagged 45% and the cyber head 29% of MMLU's non-test
    questions at a certified 1%; with these as background, 3.9% and 6.0%, and 3.4% and
    2.4% once they also calibrate as a source of their own (the generalisation probes;
    recall fell from 0.99 / 0.93 to 0.86 / 0.86). 1,237 questions, 16 or more per subject,
    in four shapes (multiple-choice stems without their choices, completion stems, short
    cases, direct questions), none taken from a dataset.
    """
    return list(_load("knowledge_questions.txt"))


def near_negative_stand_ins() -> dict[str, list[str]]:
    """What joins the background when a policy has no negatives near its targets: other people, other subjects.

    Only then: a policy's own retain examples or calibration set say what "near" means
    for it, and generic stand-ins only add noise there (see :func:`people_questions`).
    Keyed by the name each corpus calibrates under, since each is its own source of
    held-out negatives.
    """
    return {"held-out people questions": people_questions(), "held-out knowledge questions": knowledge_questions()}


def people_questions(seed: int = 0) -> list[str]:
    """Questions about made-up people: the shapes of a question about a person, with names no policy is about.

    A policy that forgets one person from a few questions, with no retain examples and no
    calibration set, otherwise has nothing to tell "about this person" from "about a
    person": with the chat prompts alone as background, one TOFU author's head fitted on
    5 questions flagged 85% of questions about other TOFU authors; with these, 27%. So
    fitting adds them exactly when the policy has no negatives of its own near its targets.
    Policies that have them do not need these: on the TOFU policy of protocol D1 (200 forget
    questions, a calibration set) they only added noise (test recall 0.990 -> 0.975).
    Deterministic, so every fit sees the same corpus.
    """
    rng = random.Random(seed)
    roles = sorted(_WORKS)
    out: list[str] = []
    for _ in range(_PEOPLE):
        role = rng.choice(roles)
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        fill = {"name": name, "role": role, "work": _WORKS[role], "place": rng.choice(_PLACES)}
        out += [t.format(**fill) for t in rng.sample(_PERSON_QUESTIONS, _QUESTIONS_PER_PERSON)]
    return list(dict.fromkeys(out))


def name_swapped(texts: Sequence[str], names: Sequence[str], *, per_text: int = 3, seed: int = 0) -> list[str]:
    """``texts`` with ``names`` replaced by made-up people's: the same questions, about someone else.

    The nearest negatives an entity target can have: its own examples' form, wording and
    topic, with only the entity changed. Each text that mentions a name gives
    ``per_text`` variants, each with one made-up person throughout. A multi-word name's
    parts are replaced where they stand alone too ("Mammadov's novels"), the first part
    by a first name and the last by a surname, so no trace of the real name is left.
    Deterministic, so every fit sees the same texts.
    """
    rng = random.Random(seed)
    parts = name_parts(names)
    if not parts:
        return []
    pattern = names_pattern(parts)
    out: list[str] = []
    for text in texts:
        if not pattern.search(text):
            continue
        for _ in range(per_text):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            while first in parts or last in parts or f"{first} {last}" in parts:  # never the entity's own name
                first, last = rng.choice(_FIRST), rng.choice(_LAST)
            fill = (f"{first} {last}", first, last)
            out.append(pattern.sub(lambda m: fill[parts[m.group(0)]], text))
    return list(dict.fromkeys(out))


def name_parts(names: Sequence[str]) -> dict[str, int]:
    """Every word :func:`name_swapped` replaces, with what replaces it: 0 a full name, 1 a first name, 2 a surname.

    The names themselves, and a multi-word name's first and last words (three letters or
    more), which texts use alone ("Mammadov's novels").
    """
    parts: dict[str, int] = {}
    for name in names:
        parts[name] = 0
        words = name.split()
        if len(words) > 1:
            for word, role in ((words[0], 1), (words[-1], 2)):
                if len(word) >= 3:
                    parts.setdefault(word, role)
    return parts


@cache
def _load(name: str) -> tuple[str, ...]:
    """One packaged corpus (one text per line) as an immutable tuple; blanks and repeats dropped."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return tuple(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
