"""The transformers runner on the real bundled SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from eco_guard.corruption import Corruption
from eco_guard.errors import InputError
from eco_guard.runner.base import GenerationOptions, MaskSpec, Runner

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
OPTS = GenerationOptions(max_new_tokens=24)
STRONG = Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=3)


def _reference_ids(runner, messages, max_new_tokens: int) -> list[int]:
    """Plain `model.generate(input_ids)` through the tokenizer's own chat template."""
    ids = runner.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)
    with torch.inference_mode():
        out = runner.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, len(ids):].tolist()
    eos = runner.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


def test_satisfies_protocol(runner) -> None:
    assert isinstance(runner, Runner)
    assert runner.max_context >= 2048


@pytest.mark.parametrize(
    "messages",
    [
        FRANCE,
        [{"role": "user", "content": "Write one sentence about the sea."}],
        [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What colour is the sky?"},
        ],
    ],
)
def test_uncorrupted_is_token_identical_to_plain_generate(runner, messages) -> None:
    ours = runner.generate_ids([messages], None, options=GenerationOptions(max_new_tokens=32))[0]
    assert ours == _reference_ids(runner, messages, 32)


def test_mask_covers_exactly_the_user_content(runner) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about Paris."},
        {"role": "assistant", "content": "Paris is a city."},
        {"role": "user", "content": "And its museums?"},
    ]
    p = runner.prepare(messages)
    masked = runner.tokenizer.decode([t for t, m in zip(p.input_ids, p.mask) if m])
    assert masked.replace(" ", "") == "TellmeaboutParis.Anditsmuseums?"
    assert len(p.mask) == len(p.input_ids)
    assert all(runner.prepare(messages, MaskSpec(scope="all")).mask)


def test_entity_scope_masks_only_the_terms(runner) -> None:
    p = runner.prepare(FRANCE, MaskSpec(scope="entities", terms=("france",)))
    masked = [runner.tokenizer.decode([t]) for t, m in zip(p.input_ids, p.mask) if m]
    assert "".join(masked).strip() == "France"
    # No term and no name present: fall back to the whole user content rather than corrupt nothing.
    nameless = [{"role": "user", "content": "what is the tallest mountain on earth?"}]
    q = runner.prepare(nameless, MaskSpec(scope="entities", terms=("germany",)))
    assert q.mask == runner.prepare(nameless).mask and any(q.mask)


def test_entity_scope_finds_names_the_terms_do_not_list(runner) -> None:
    """Users name a target in ways its examples did not: names in the prompt are corrupted too."""
    chat = [{"role": "user", "content": "Which author wrote 'Their Eyes Were Watching God' in Florida?"}]
    p = runner.prepare(chat, MaskSpec(scope="entities", terms=("zora neale hurston",)))
    masked = runner.tokenizer.decode([t for t, m in zip(p.input_ids, p.mask) if m])
    assert "Their Eyes Were Watching God" in masked and "Florida" in masked
    assert "author" not in masked and "Which" not in masked


def test_corruption_removes_the_fact_and_is_reproducible(runner) -> None:
    clean = runner.generate([FRANCE], None, options=OPTS)[0]
    assert "paris" in clean.lower()
    bad1 = runner.generate([FRANCE], STRONG, options=OPTS)[0]
    bad2 = runner.generate([FRANCE], STRONG, options=OPTS)[0]
    assert "paris" not in bad1.lower()
    assert bad1 == bad2


def test_per_row_corruption_does_not_leak_into_other_rows(runner) -> None:
    other = [{"role": "user", "content": "Name three primary colours."}]
    both_clean = runner.generate([other, FRANCE], [None, None], options=OPTS)
    mixed = runner.generate([other, FRANCE], [None, STRONG], options=OPTS)
    assert mixed[0] == both_clean[0]
    assert mixed[1] != both_clean[1]
    # A corrupted row's noise depends only on its prompt and seed, not on its batch.
    alone = runner.generate([FRANCE], STRONG, options=OPTS)[0]
    assert "paris" not in mixed[1].lower() and "paris" not in alone.lower()


def _bigrams(ids: list[int]) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + 2]) for i in range(len(ids) - 1)]


def test_corrupted_rows_never_loop_and_clean_rows_are_untouched(runner) -> None:
    """The no-repeat rule applies to corrupted rows only (see runner/loop_guard.py)."""
    chats = [
        [{"role": "user", "content": "Which author wrote 'The Bluest Eye' and won the Nobel Prize for Literature?"}],
        [{"role": "user", "content": "The author of the play 'Death of a Salesman', Arthur Miller, was married to which famous actress?"}],
        [{"role": "user", "content": "Count from one to twenty in words, one per line."}],
    ]
    opts = GenerationOptions(max_new_tokens=48)
    corrupt = [Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=s) for s in (1, 2)] + [None]
    ids = runner.generate_ids(chats, corrupt, options=opts)
    for row in ids[:2]:
        grams = _bigrams(row)
        assert len(grams) == len(set(grams)), runner.tokenizer.decode(row)
    assert ids[2] == runner.generate_ids([chats[2]], None, options=opts)[0]  # clean row: bare decoding
    off = runner.generate_ids(chats[:2], corrupt[:2], options=GenerationOptions(max_new_tokens=48, corrupted_no_repeat_ngram=0))
    assert off != ids[:2]  # the rule is what changed these answers
    streamed = "".join(runner.stream(chats[0], corrupt[0], options=opts))
    assert streamed == runner.tokenizer.decode(ids[0], skip_special_tokens=True)


def test_no_repeat_processor_touches_only_its_rows() -> None:
    import torch

    from eco_guard.runner.loop_guard import CorruptedRowsNoRepeat

    proc = CorruptedRowsNoRepeat([0], n=2)
    history = torch.tensor([[5, 6, 5], [5, 6, 5]])
    scores = proc(history[:, :0], torch.zeros(2, 10))  # first call fixes where the answer starts
    scores = proc(history, torch.zeros(2, 10))
    assert scores[0, 6] == -float("inf") and torch.isfinite(scores[0, [0, 1, 2, 3, 4, 5, 7, 8, 9]]).all()
    assert torch.isfinite(scores[1]).all()


def test_stream_matches_generate(runner) -> None:
    pieces = list(runner.stream(FRANCE, None, options=OPTS))
    assert len(pieces) > 1
    assert "".join(pieces) == runner.generate([FRANCE], None, options=OPTS)[0]


def test_stream_can_be_abandoned(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing a stream stops its worker: the thread is gone once ``close`` returns, and
    it generated a handful of tokens, not the 200 it was asked for (EOS ignored, so
    nothing else would have stopped it early)."""
    generated: list[int] = []
    real_generate = runner.model.generate

    def counting_generate(*args: object, **kwargs: object) -> torch.Tensor:
        out = real_generate(*args, **kwargs)
        generated.append(int(out.shape[-1]))  # new tokens only: the prompt went in as embeddings
        return out

    monkeypatch.setattr(runner.model, "generate", counting_generate)
    it = runner.stream(FRANCE, None, options=GenerationOptions(max_new_tokens=200, ignore_eos=True))
    first = next(it)
    workers = [t for t in threading.enumerate() if t.name == "eco-guard-stream"]
    it.close()
    assert first and len(workers) == 1
    assert not workers[0].is_alive()
    assert len(generated) == 1 and generated[0] < 50, generated


async def test_async_twins_under_a_running_loop(runner) -> None:
    text = (await runner.agenerate([FRANCE], None, options=OPTS))[0]
    pieces = [p async for p in runner.astream(FRANCE, None, options=OPTS)]
    assert len(pieces) > 1 and "".join(pieces) == text
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await runner.agenerate([FRANCE], None, options=OPTS)
    task.cancel()
    assert ticks > 5, "generation blocked the event loop"


def test_score_choices(runner) -> None:
    scores = runner.score_choices(FRANCE, ["Paris", "London", "Berlin", "Madrid"])
    assert max(range(4), key=scores.__getitem__) == 0
    mean = runner.score_choices(FRANCE, ["Paris is the capital."], reduction="mean")
    assert mean[0] < 0
    corrupted = runner.score_choices(FRANCE, ["Paris", "London", "Berlin", "Madrid"], STRONG)
    assert corrupted != scores


@pytest.mark.parametrize("corruption", [None, STRONG])
def test_one_token_choices_take_the_single_pass_path_with_the_same_scores(runner, corruption) -> None:
    letters = ["A", "B", "C", "D"]
    assert all(len(runner.tokenizer(c, add_special_tokens=False)["input_ids"]) == 1 for c in letters)
    fast = runner.score_choices(FRANCE, letters, corruption)
    general = runner.score_choices(FRANCE, [*letters, "Paris is the capital."], corruption)[:4]  # forces one row per choice
    assert fast == pytest.approx(general, abs=1e-4)


def test_concurrent_calls_each_get_their_own_answer(runner) -> None:
    prompts = [
        ([{"role": "user", "content": q}], c)
        for q, c in [
            ("What is the capital of France?", None),
            ("What is the capital of France?", STRONG),
            ("Name three primary colours.", None),
            ("Name three primary colours.", STRONG.with_seed(9)),
        ]
    ]
    expected = [runner.generate([m], c, options=OPTS)[0] for m, c in prompts]
    results: list[str | None] = [None] * len(prompts)

    def work(i: int) -> None:
        m, c = prompts[i]
        results[i] = runner.generate([m], c, options=OPTS)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_prompt_longer_than_context_is_a_clear_error(runner) -> None:
    long = [{"role": "user", "content": "word " * (runner.max_context + 10)}]
    with pytest.raises(InputError, match="context"):
        runner.generate([long], None, options=OPTS)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "empty"),
        ([{"role": "robot", "content": "hi"}], "role"),
        ([{"role": "user", "content": 3}], "content"),
        ([{"role": "user", "content": "   "}], "no non-empty user message"),
    ],
)
def test_bad_messages(runner, bad, match) -> None:
    with pytest.raises(InputError, match=match):
        runner.generate([bad], None, options=OPTS)
