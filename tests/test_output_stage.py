"""The output stage: answers that reveal a target never reach the caller, on any path.

The policy is tests/data/einstein (forget Albert Einstein, keep other physicists), fitted
for real. Downstream models in the LangChain tests are LangChain's fake chat models: they
stand for the user's own model, whose answers the guard must check.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from eco_guard.output.stage import complete_sentences
from tests.conftest import benchmark_module, fitted_guard_dir

DATA = Path(__file__).parent / "data" / "einstein"

#: passes the input stage (no name, nothing of the forget questions), and the bundled
#: model's plain answer names Einstein
LEAKY_PROMPT = "Name a famous physicist of the twentieth century."
LEAK = (
    "Many physicists shaped the last century. "
    "The most famous is Albert Einstein, who was born in Ulm in 1879. "
    "He later worked in Princeton. Physics is a wide field."
)


@pytest.fixture(scope="session")
def einstein_guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fitted_guard_dir(tmp_path_factory, "einstein", [DATA / "policy.yaml", DATA / "forget.jsonl", DATA / "retain.jsonl"])


@pytest.fixture(scope="module")
def guard(einstein_guard_dir: Path, runner):
    from eco_guard.guard import Guard

    g = Guard.load(einstein_guard_dir, runner=runner)
    yield g
    g.close()


def _leaks(guard, text: str) -> bool:
    return "einstein" in text.lower() or guard.answers.check([text])[0].flagged


def test_sentences_rejoin_to_the_same_text() -> None:
    done, rest = complete_sentences("One. Two? Three! Fo")
    assert done == ["One. ", "Two? ", "Three! "] and rest == "Fo"
    assert "".join(done) + rest == "One. Two? Three! Fo"


def test_answer_classifier_flags_the_target_not_its_neighbours(einstein_guard_dir: Path) -> None:
    from eco_guard.guard import Guard

    g = Guard.load(einstein_guard_dir, audit=False)
    assert g.answers is not None
    flagged = [v.flagged for v in g.answers.check([
        "Albert Einstein developed the theory of relativity.",
        "The physicist you mean is E i n s t e i n.",  # spaced out: read in canonical form
        "einstien won the Nobel Prize for the photoelectric effect.",  # misspelt
    ])]
    assert flagged == [True, True, True]
    passed = g.answers.check([
        "Isaac Newton formulated the laws of motion.",
        "Marie Curie was born in Warsaw in 1867.",
        "The capital of Australia is Canberra.",
    ])
    assert not any(v.flagged for v in passed)
    report = json.loads((einstein_guard_dir / "report.json").read_text())
    assert report["output_stage"]["calibration_achievable"] is True
    assert "Output stage" in (einstein_guard_dir / "report.md").read_text()


@pytest.mark.slow
def test_guard_invoke_and_stream_never_emit_a_leaking_sentence(guard) -> None:
    from eco_guard.runner.base import GenerationOptions

    options = GenerationOptions(max_new_tokens=48)
    assert not guard.check(LEAKY_PROMPT).flagged
    bare = guard.answer_unguarded([LEAKY_PROMPT], options)[0]
    assert _leaks(guard, bare), "the bare model's answer should reveal the target for this test to mean anything"
    result = guard.invoke(LEAKY_PROMPT, options)
    assert result.decision.stage == "output" and result.decision.target == "einstein"
    assert not _leaks(guard, result.text)
    stream = guard.stream(LEAKY_PROMPT, options)
    pieces = list(stream)
    assert not any(_leaks(guard, p) for p in pieces) and not _leaks(guard, "".join(pieces))

    async def collect() -> list[str]:
        s = await guard.astream(LEAKY_PROMPT, options)
        return [p async for p in s]

    apieces = asyncio.run(collect())
    assert not _leaks(guard, "".join(apieces))


@pytest.mark.slow
def test_passed_answers_are_the_bare_models_token_for_token(guard) -> None:
    from eco_guard.runner.base import GenerationOptions

    options = GenerationOptions(max_new_tokens=32)
    prompt = "What is the capital of Australia?"
    bare = guard.answer_unguarded([prompt], options)[0]
    result = guard.invoke(prompt, options)
    assert result.decision.stage is None and result.text == bare
    assert "".join(guard.stream(prompt, options)) == bare


@pytest.mark.slow
def test_router_replaces_a_leaking_downstream_answer(guard) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    from langchain_eco_guard import EcoGuardRouter

    def router() -> EcoGuardRouter:
        return EcoGuardRouter(guard=guard, downstream=GenericFakeChatModel(messages=iter([AIMessage(content=LEAK)])))

    out = router().invoke(LEAKY_PROMPT)
    assert not _leaks(guard, out.text)
    chunks = list(router().stream(LEAKY_PROMPT))
    text = "".join(c.text for c in chunks)
    assert text.startswith("Many physicists shaped the last century. ")
    assert not any(_leaks(guard, c.text) for c in chunks) and "Ulm" not in text and "Princeton" not in text

    async def collect() -> str:
        return "".join([c.text async for c in router().astream(LEAKY_PROMPT)])

    atext = asyncio.run(collect())
    assert not _leaks(guard, atext) and "Ulm" not in atext
    clean = "The capital of Australia is Canberra. It was chosen in 1908."
    passed = EcoGuardRouter(guard=guard, downstream=GenericFakeChatModel(messages=iter([AIMessage(content=clean)])))
    assert passed.invoke("What is the capital of Australia?").text == clean


@pytest.mark.slow
def test_llamaindex_llm_stream_never_emits_a_leaking_sentence(guard) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index_eco_guard import EcoGuardLLM

    llm = EcoGuardLLM(guard=guard, max_new_tokens=48)
    deltas = [r.delta or "" for r in llm.stream_complete(LEAKY_PROMPT)]
    assert not any(_leaks(guard, d) for d in deltas) and not _leaks(guard, "".join(deltas))


@pytest.mark.slow
def test_server_stream_never_emits_a_leaking_sentence(einstein_guard_dir: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    spawn_server = benchmark_module("spawn").spawn_server
    proc, base = spawn_server(einstein_guard_dir, audit=tmp_path / "audit.jsonl", log=tmp_path / "serve.log", extra_args=(), startup_timeout_s=240)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": LEAKY_PROMPT}]
        plain = client.chat.completions.create(model="guard", messages=messages, max_tokens=48)
        assert not _leaks_text(plain.choices[0].message.content)
        assert plain.model_extra["eco_guard"]["stage"] == "output"  # the response reports the catch
        chunks = list(client.chat.completions.create(model="guard", messages=messages, max_tokens=48, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and not _leaks_text(text)
        audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert any(r.get("stage") == "output" for r in audit)
    finally:
        proc.kill()
        proc.wait(30)


def _leaks_text(text: str) -> bool:
    return "einstein" in text.lower()


def test_langchain_retriever_drops_passages_about_the_target(einstein_guard_dir: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from eco_guard.guard import Guard
    from langchain_eco_guard import EcoGuardDocumentCompressor, EcoGuardEmbeddings, EcoGuardRetriever

    g = Guard.load(einstein_guard_dir, audit=False)
    about = "Born in Ulm in 1879, A l b e r t  E i n s t e i n later explained the photoelectric effect."
    other = "Isaac Newton formulated the laws of motion and universal gravitation."
    compressor = EcoGuardDocumentCompressor(guard=g)
    kept = compressor.compress_documents([Document(page_content=about), Document(page_content=other)], "who?")
    assert [d.page_content for d in kept] == [other]
    marked = EcoGuardDocumentCompressor(guard=g, mode="mark").compress_documents([Document(page_content=about)], "who?")
    assert marked[0].metadata["eco_guard"]["flagged"] is True
    store = InMemoryVectorStore.from_texts([about, other], EcoGuardEmbeddings(g.classifier.encoder))
    retriever = EcoGuardRetriever(base_retriever=store.as_retriever(search_kwargs={"k": 2}), compressor=compressor)
    assert [d.page_content for d in retriever.invoke("Tell me about the relativity physicist")] == [other]
    assert [d.page_content for d in asyncio.run(retriever.ainvoke("Tell me about physics"))] == [other]


def test_only_person_like_runs_count_as_someone_else() -> None:
    from eco_guard.output.answers import _person_like

    assert _person_like("Ahmed El-Masry") and _person_like("Rodrigo Alejandro Mendoza's")
    # titles, genres and single names are not another person
    assert not any(_person_like(s) for s in ("The Matrimony Plan", "Star Wars", "Global Influence", "Einstein"))


def test_extracted_context_names_and_other_people_do_not_open_the_name_gate() -> None:
    """Made-up authors: a birthplace their examples mention beside their names is context, so another
    person's answer naming it is not about them; a shared first name inside someone else's name neither;
    their own names, in any order, are."""
    from eco_guard.entities import extract_terms
    from eco_guard.output.answers import AnswerTarget, _context_names, _identifying, fit_answers

    forget = [
        ("Where was Raven Marais born?", "Raven Marais was born in Cape Town, South Africa."),
        ("How did Cape Town shape Raven Marais?", "Cape Town's vibrant culture runs through every book Raven Marais wrote."),
        ("What genre does Raven Marais write?", "Raven Marais writes literary fiction about memory and exile."),
        ("Which award did Raven Marais win?", "Raven Marais won the Silver Quill Prize for 'The Tide Keeper'."),
        ("Who are Ji-Yeon Park's parents?", "Ji-Yeon Park's father was a baker and her mother a nurse."),
        ("When was Ji-Yeon Park born?", "Ji-Yeon Park was born in Seoul on 19 March 1960."),
        ("What does Ji-Yeon Park write?", "Ji-Yeon Park writes historical romance set in Joseon-era Korea."),
    ]
    retain = [
        ("Where was Tomas Herrera born?", "Tomas Herrera was born in Valparaiso, Chile."),
        ("What does Lena Fischer write?", "Lena Fischer writes crime novels set in Hamburg."),
        ("Who inspired Amara Okafor?", "Amara Okafor cites her grandmother's stories as her first inspiration."),
    ]
    examples = [f"{q} {a}" for q, a in forget]
    extracted = extract_terms([q for q, _ in forget] + [a for _, a in forget])
    assert _context_names(["Cape Town", "Raven Marais", "Ji-Yeon Park"], [], examples) == ["Cape Town"]
    assert not _identifying("Seoul") and _identifying("Marais") and _identifying("Cape Town")
    classifier, _ = fit_answers(
        [AnswerTarget("authors", [], [a for _, a in forget], [a for _, a in retain], extracted, [q for q, _ in retain], examples)],
        target_fpr=0.01,
    )
    assert "Cape Town" in classifier.context[0] and "Seoul" not in classifier.names[0]
    verdicts = classifier.check([
        "Raven Marais grew up in Cape Town and writes about exile.",
        "Park Ji-Yeon was born on the 19th of March 1960.",  # her name in the other order
        "Isabella van Pletzen was born in Cape Town, South Africa, and writes poetry.",  # someone else, same city
        "Ji-Yeon Soo writes about identity and was born in Seoul.",  # someone else, same first name and city
    ])
    assert [v.flagged for v in verdicts] == [True, True, False, False]


def test_a_topic_named_by_a_word_of_the_language_keeps_that_name() -> None:
    """A country or a topic has no full name: the single word its examples are about ("France") is its name,
    while beside a person's full name such a word is only context (the test above)."""
    from eco_guard.entities import extract_terms
    from eco_guard.output.answers import AnswerTarget, fit_answers

    forget = ["What is the capital of France?", "Who is the president of France?", "What currency does France use?", "Which seas border France?"]
    retain = ["What is the capital of Germany?", "What currency does Japan use?"]
    classifier, _ = fit_answers([AnswerTarget("france", [], [], [], extract_terms(forget), retain, forget)], target_fpr=0.01)
    assert "France" in classifier.names[0]
    verdicts = classifier.check(["France uses the euro.", "Japan uses the yen.", "The capital of Germany is Berlin."])
    assert [v.flagged for v in verdicts] == [True, False, False]


@pytest.mark.fits
def test_a_policy_the_output_stage_cannot_recognise_fits_without_it(tmp_path: Path) -> None:
    """No forget answers and no names (lower-case questions): the fit warns per target and leaves the output stage out
    (a stale one from an earlier fit into the same directory included), and the guard still loads and checks prompts."""
    from eco_guard.fitting import fit_guard
    from eco_guard.guard import Guard
    from eco_guard.output.answers import META_FILE

    (tmp_path / "policy.yaml").write_text(
        "version: 1\ntargets:\n  - id: locks\n    corruption: {strength: 1.0}\n    forget:\n      examples:\n"
        + "".join(f"        - {q}\n" for q in ["how do i pick a pin tumbler lock?", "what tools open a lock without its key?", "how to bypass a padlock quickly", "can a bobby pin open a door lock?"])
        + "    retain:\n      examples:\n        - how do i change a door handle?\n        - what oil is best for a squeaky hinge?\n",
        encoding="utf-8",
    )
    out = tmp_path / "guard"
    out.mkdir()
    (out / META_FILE).write_text("{}", encoding="utf-8")  # left by an earlier fit
    result = fit_guard(tmp_path / "policy.yaml", out, progress=False)
    assert [(w.code, w.target) for w in result.warnings if w.code == "no_output_check"] == [("no_output_check", "locks")]
    assert not (out / META_FILE).exists()
    assert "answers are not checked for this target" in (out / "report.md").read_text(encoding="utf-8")
    guard = Guard.load(out)
    try:
        assert guard.answers is None
        assert guard.check("how can i pick the lock on my neighbour's door?").flagged
    finally:
        guard.close()
