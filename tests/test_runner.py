"""The runner on both bundled models, and a second backend that proves the protocol is enough.

Every test that loads a model runs on SmolLM2-135M-Instruct (Llama architecture, chat
template, byte-level BPE) and on Gemma 3 270M (Gemma 3 architecture, scaled
embeddings, no chat template, SentencePiece): the places where architectures differ are
exactly the ones ECO touches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import torch

from eco_guard.corruption import Corruption
from eco_guard.errors import InputError
from eco_guard.answer_metrics import MIN_DISTINCT, distinct_ratio
from eco_guard.runner.base import GenerationOptions, GenerationRow, MaskSpec, Runner

pytestmark = pytest.mark.slow

MODELS = ["default", "gemma3-270m"]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
OPTS = GenerationOptions(max_new_tokens=24)
#: a corruption that removes facts: per dimension 0.27 / 0.1356 = ~2 stds of the embeddings
#: each model consumes (SmolLM2's std is 0.1356; the same multiple is used for Gemma)
STRONG_STDS = 0.27 / 0.1356


@pytest.fixture(scope="session")
def gemma_runner():
    from eco_guard.runner.transformers_runner import TransformersRunner

    return TransformersRunner.load("gemma3-270m", progress=False)


@pytest.fixture(params=MODELS, scope="module")
def model(request):
    """Each bundled model in turn (SmolLM2 is the session's shared runner)."""
    return request.getfixturevalue("runner" if request.param == "default" else "gemma_runner")


def strong(r, seed: int = 3) -> Corruption:
    """SmolLM2: exactly the 0.27 the tests always used; Gemma: the same multiple of its own std."""
    std, dim = r.embedding_stats()
    strength = 0.27 if r.name.startswith("SmolLM2") else STRONG_STDS * std
    return Corruption("rand_noise_first_n", dims=dim, strength=strength, seed=seed)


def row(messages, corruption=None, mask=MaskSpec()) -> GenerationRow:
    return GenerationRow(messages, corruption, mask)


def _reference_ids(r, messages, max_new_tokens: int) -> list[int]:
    """Plain ``model.generate(input_ids)`` on the rendered prompt, cut at EOS."""
    text = r.chat_format.render(messages).text
    ids = r.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = r.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, len(ids):].tolist()
    cut = [i for i, t in enumerate(new) if t in r.eos_ids]
    return new[: cut[0]] if cut else new


def test_satisfies_protocol(model) -> None:
    assert isinstance(model, Runner)
    assert model.max_context >= 2048


@pytest.mark.parametrize(
    "messages",
    [
        FRANCE,
        [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "What colour is the sky?"},
        ],
    ],
)
def test_uncorrupted_is_token_identical_to_plain_generate(model, messages) -> None:
    ours = model.generate_ids([row(messages)], GenerationOptions(max_new_tokens=32))[0]
    reference = _reference_ids(model, messages, 32)
    if not model.chat_format.stops:
        assert ours == reference
    else:  # plain format: the answer ends where the model starts a new turn
        assert ours == reference[: len(ours)]
        assert len(ours) == len(reference) or model.chat_format.cut(model.tokenizer.decode(reference[: len(ours) + 1]))[1]


def test_chat_format_matches_the_model(model) -> None:
    """SmolLM2 uses its chat template; Gemma 3 270M (a base model) the plain format, with its BOS."""
    text = model.chat_format.render(FRANCE).text
    if model.name.startswith("SmolLM2"):
        assert not model.chat_format.plain and "<|im_start|>user" in text
    else:
        assert model.chat_format.plain
        assert text == "<bos>Question: What is the capital of France?\nAnswer:"
        assert model.prepare(FRANCE).input_ids[0] == model.tokenizer.bos_token_id


def test_embedding_stats_are_those_the_model_consumes(model) -> None:
    """Gemma 3 multiplies its table by sqrt(hidden) on lookup; ``strength: auto`` must start from that."""
    weight = model.model.get_input_embeddings().weight
    std, dim = model.embedding_stats()
    assert dim == weight.shape[1]
    scale = dim**0.5 if model.model.config.model_type.startswith("gemma") else 1.0
    assert std == pytest.approx(float(weight.float().std()) * scale, rel=1e-3)
    # and the rows handed to the model carry the same scale
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(model.embed(ids), weight[ids] * torch.tensor(scale, dtype=weight.dtype), rtol=1e-3)


def _masked_text(r, p) -> str:
    """The masked tokens' text, whitespace removed (tokenizers differ in where spaces go)."""
    return "".join(r.tokenizer.decode([t for t, m in zip(p.input_ids, p.mask) if m]).split())


def test_mask_covers_exactly_the_user_content(model) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about Paris."},
        {"role": "assistant", "content": "Paris is a city."},
        {"role": "user", "content": "And its museums?"},
    ]
    p = model.prepare(messages)
    assert _masked_text(model, p) == "TellmeaboutParis.Anditsmuseums?"
    assert len(p.mask) == len(p.input_ids)
    assert all(model.prepare(messages, MaskSpec(scope="all")).mask)


@pytest.mark.parametrize(
    "question, terms, names",
    [
        # one-token-ish name, given as a term
        ("What is the capital of France?", ("france",), ["France"]),
        # a name split into several tokens on both tokenizers, found without terms
        ("Which novels did Chimamanda Ngozi Adichie write?", (), ["ChimamandaNgoziAdichie"]),
        # accented names (multi-byte characters inside tokens)
        ("Where was Gabriel García Márquez born, and did Zoë Kravitz act?", (), ["GabrielGarcíaMárquez", "ZoëKravitz"]),
        ("Quelle ville a vu naître Émile Zola?", ("émile zola",), ["ÉmileZola"]),
    ],
)
def test_entity_scope_corrupts_exactly_the_name_tokens(model, question, terms, names) -> None:
    """Masked tokens are exactly those overlapping the names: each name is covered whole, nothing else."""
    chat = [{"role": "user", "content": question}]
    p = model.prepare(chat, MaskSpec(scope="entities", terms=terms))
    enc = model.tokenizer(model.chat_format.render(chat).text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == p.input_ids
    text = model.chat_format.render(chat).text
    spans = []
    for name in names:
        spaced = _spaced(name, question)
        start = text.index(spaced)
        spans.append((start, start + len(spaced)))
    expected = [any(s < e_tok and s_tok < e for s, e in spans) for s_tok, e_tok in enc["offset_mapping"]]
    assert p.mask == expected, [model.tokenizer.decode([t]) for t, m in zip(p.input_ids, p.mask) if m]
    assert _masked_text(model, p) == "".join(names)


def _spaced(name: str, question: str) -> str:
    """The name as written in the question (``names`` are given without spaces)."""
    for i in range(len(question)):
        for j in range(i + 1, len(question) + 1):
            if "".join(question[i:j].split()) == name and question[i] != " " and question[j - 1] != " ":
                return question[i:j]
    raise AssertionError(f"{name} not in {question}")


def test_entity_scope_falls_back_to_the_prompt_when_nothing_is_named(model) -> None:
    nameless = [{"role": "user", "content": "what is the tallest mountain on earth?"}]
    q = model.prepare(nameless, MaskSpec(scope="entities", terms=("germany",)))
    assert q.mask == model.prepare(nameless).mask and any(q.mask)


def test_corruption_changes_the_answer_and_is_reproducible(model) -> None:
    clean = model.generate([row(FRANCE)], OPTS)[0]
    if model.name.startswith("SmolLM2"):
        assert "paris" in clean.lower()
    bad1 = model.generate([row(FRANCE, strong(model))], OPTS)[0]
    bad2 = model.generate([row(FRANCE, strong(model))], OPTS)[0]
    assert "paris" not in bad1.lower() and bad1 != clean
    assert bad1 == bad2


def test_per_row_corruption_does_not_leak_into_other_rows(model) -> None:
    other = [{"role": "user", "content": "Name three primary colours."}]
    both_clean = model.generate([row(other), row(FRANCE)], OPTS)
    mixed = model.generate([row(other), row(FRANCE, strong(model))], OPTS)
    assert mixed[0] == both_clean[0]
    assert mixed[1] != both_clean[1]
    alone = model.generate([row(FRANCE, strong(model))], OPTS)[0]
    assert "paris" not in mixed[1].lower() and "paris" not in alone.lower()


def _bigrams(ids: list[int]) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + 2]) for i in range(len(ids) - 1)]


def test_corrupted_rows_never_loop_and_clean_rows_are_untouched(model) -> None:
    """The no-repeat rule applies to corrupted rows only (see runner/loop_guard.py)."""
    chats = [
        [{"role": "user", "content": "Which author wrote 'The Bluest Eye' and won the Nobel Prize for Literature?"}],
        [{"role": "user", "content": "The author of the play 'Death of a Salesman', Arthur Miller, was married to which famous actress?"}],
        [{"role": "user", "content": "Count from one to twenty in words, one per line."}],
    ]
    opts = GenerationOptions(max_new_tokens=48)
    corrupt = [strong(model, seed=s) for s in (1, 2)] + [None]
    rows = [row(c, k) for c, k in zip(chats, corrupt)]
    ids = model.generate_ids(rows, opts)
    for answer in ids[:2]:
        grams = _bigrams(answer)
        assert len(grams) == len(set(grams)), model.tokenizer.decode(answer)
        assert distinct_ratio(answer) >= MIN_DISTINCT, model.tokenizer.decode(answer)
    assert ids[2] == model.generate_ids([rows[2]], opts)[0]  # clean row: bare decoding
    off = model.generate_ids(rows[:2], GenerationOptions(max_new_tokens=48, corrupted_no_repeat_ngram=0, corrupted_min_distinct=0.0))
    assert off != ids[:2]  # the rule is what changed these answers
    streamed = "".join(model.stream(rows[0], opts))
    assert streamed == model.generate([rows[0]], opts)[0]


def test_no_repeat_processor_touches_only_its_rows() -> None:
    from eco_guard.runner.loop_guard import CorruptedRowsNoRepeat

    proc = CorruptedRowsNoRepeat([0], n=2)
    history = torch.tensor([[5, 6, 5], [5, 6, 5]])
    scores = proc(history[:, :0], torch.zeros(2, 10))  # first call fixes where the answer starts
    scores = proc(history, torch.zeros(2, 10))
    assert scores[0, 6] == -float("inf") and torch.isfinite(scores[0, [0, 1, 2, 3, 4, 5, 7, 8, 9]]).all()
    assert torch.isfinite(scores[1]).all()


def test_distinct_floor_bans_used_tokens_only_below_it() -> None:
    """A digit-string loop has no repeated pair to ban; the floor on distinct tokens catches it."""
    from eco_guard.runner.loop_guard import CorruptedRowsNoRepeat

    history = torch.tensor([[1, 2, 3, 1, 4, 2, 5, 3, 6, 4, 7, 5], [1, 2, 3, 1, 4, 2, 5, 3, 6, 4, 7, 5]])  # 7 of 12 distinct
    floor = CorruptedRowsNoRepeat([0], n=0, min_distinct=0.6)
    floor(history[:, :0], torch.zeros(2, 10))
    scores = floor(history, torch.zeros(2, 10))  # one more used token: 7/13 < 0.6
    assert (scores[0, 1:8] == -float("inf")).all() and torch.isfinite(scores[0, [0, 8, 9]]).all()
    assert torch.isfinite(scores[1]).all()
    lenient = CorruptedRowsNoRepeat([0], n=0, min_distinct=0.5)
    lenient(history[:, :0], torch.zeros(2, 10))
    assert torch.isfinite(lenient(history, torch.zeros(2, 10))).all()  # 7/13 >= 0.5: nothing banned
    # greedy decoding that prefers ten "digits" ends above the floor however long it runs
    guard = CorruptedRowsNoRepeat([0], n=2, min_distinct=MIN_DISTINCT)
    out = torch.zeros((1, 0), dtype=torch.long)
    preference = torch.cat([torch.linspace(20, 11, 10), torch.zeros(40)])
    for _ in range(48):
        out = torch.cat([out, guard(out, preference.clone()[None]).argmax(-1, keepdim=True)], dim=1)
    assert distinct_ratio(out[0].tolist()) >= MIN_DISTINCT


def test_loop_guard_is_off_only_when_both_rules_are() -> None:
    from eco_guard.runner.loop_guard import loop_guard

    assert loop_guard([0], GenerationOptions(corrupted_no_repeat_ngram=0, corrupted_min_distinct=0.0)) is None
    assert loop_guard([], GenerationOptions()) is None
    assert loop_guard([0], GenerationOptions(corrupted_no_repeat_ngram=0)).min_distinct == MIN_DISTINCT
    with pytest.raises(InputError, match="corrupted_min_distinct"):
        GenerationOptions(corrupted_min_distinct=1.5)


def test_stream_matches_generate(model) -> None:
    # A corrupted row: its answer is long on both models (Gemma answers the clean one in one token).
    long = row(FRANCE, strong(model))
    pieces = list(model.stream(long, OPTS))
    assert len(pieces) > 1 or model.chat_format.plain  # Gemma's stops can end it after one piece
    assert "".join(pieces) == model.generate([long], OPTS)[0]
    assert "".join(model.stream(row(FRANCE), OPTS)) == model.generate([row(FRANCE)], OPTS)[0]


def test_stream_can_be_abandoned(model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing a stream stops its worker: the thread is gone once ``close`` returns, and
    it generated a handful of tokens, not the 200 it was asked for (EOS ignored, so
    nothing else would have stopped it early)."""
    generated: list[int] = []
    real_generate = model.model.generate

    def counting_generate(*args: object, **kwargs: object) -> torch.Tensor:
        out = real_generate(*args, **kwargs)
        generated.append(int(out.shape[-1]))  # new tokens only: the prompt went in as embeddings
        return out

    monkeypatch.setattr(model.model, "generate", counting_generate)
    it = model.stream(row(FRANCE), GenerationOptions(max_new_tokens=200, ignore_eos=True))
    first = next(it)
    workers = [t for t in threading.enumerate() if t.name == "eco-guard-stream"]
    it.close()
    assert first and len(workers) == 1
    assert not workers[0].is_alive()
    assert len(generated) == 1 and generated[0] < 50, generated


async def test_async_twins_under_a_running_loop(model) -> None:
    long = row(FRANCE, strong(model))  # a long answer on both models
    text = (await model.agenerate([long], OPTS))[0]
    pieces = [p async for p in model.astream(long, OPTS)]
    assert (len(pieces) > 1 or model.chat_format.plain) and "".join(pieces) == text
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await model.agenerate([row(FRANCE)], OPTS)
    task.cancel()
    assert ticks > 5, "generation blocked the event loop"
    assert await model.ascore_choices(row(FRANCE), ["Paris", "London"]) == model.score_choices(row(FRANCE), ["Paris", "London"])


def test_score_choices(model) -> None:
    scores = model.score_choices(row(FRANCE), ["Paris", "London", "Berlin", "Madrid"])
    assert max(range(4), key=scores.__getitem__) == 0
    mean = model.score_choices(row(FRANCE), ["Paris is the capital."], reduction="mean")
    assert mean[0] < 0
    corrupted = model.score_choices(row(FRANCE, strong(model)), ["Paris", "London", "Berlin", "Madrid"])
    assert corrupted != scores


@pytest.mark.parametrize("corrupted", [False, True])
def test_one_token_choices_take_the_single_pass_path_with_the_same_scores(model, corrupted) -> None:
    letters = ["A", "B", "C", "D"]
    assert all(len(model.tokenizer(c, add_special_tokens=False)["input_ids"]) == 1 for c in letters)
    r = row(FRANCE, strong(model) if corrupted else None)
    fast = model.score_choices(r, letters)
    general = model.score_choices(r, [*letters, "Paris is the capital."])[:4]  # forces one row per choice
    assert fast == pytest.approx(general, abs=1e-4)


def test_concurrent_calls_each_get_their_own_answer(model) -> None:
    rows = [
        row([{"role": "user", "content": q}], c)
        for q, c in [
            ("What is the capital of France?", None),
            ("What is the capital of France?", strong(model)),
            ("Name three primary colours.", None),
            ("Name three primary colours.", strong(model).with_seed(9)),
        ]
    ]
    expected = [model.generate([r], OPTS)[0] for r in rows]
    results: list[str | None] = [None] * len(rows)

    def work(i: int) -> None:
        results[i] = model.generate([rows[i]], OPTS)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_prompt_longer_than_context_is_a_clear_error(model) -> None:
    long = [{"role": "user", "content": "word " * (model.max_context + 10)}]
    with pytest.raises(InputError, match="context"):
        model.generate([row(long)], OPTS)


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
    """Validation is shared (``messages.py``), before any model runs: one model suffices."""
    with pytest.raises(InputError, match=match):
        runner.generate([row(bad)], OPTS)


# ---------------------------------------------------------------- a second backend


def _tiny_loop_runner_class():
    from eco_guard.runner.embedding_runner import EmbeddedBatch, EmbeddingRunner
    from eco_guard.runner.loop_guard import loop_guard

    class LoopRunner(EmbeddingRunner):
        """A second backend: a hand-written greedy loop over a model's forward pass.

        It implements only the backend parts (embedding lookup, generate, stream, one
        forward pass); templating, masking, corruption, the loop guard's rows, stop
        strings, text streaming and the async twins all come from the shared core.
        """

        def __init__(self, model, tokenizer) -> None:
            self.model = model
            super().__init__(
                tokenizer,
                name="tiny-loop",
                max_context=model.config.max_position_embeddings,
                device=torch.device("cpu"),
                pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                eos_ids=[tokenizer.eos_token_id],
                vocab_size=model.config.vocab_size,
            )

        def embed(self, ids: torch.Tensor) -> torch.Tensor:
            return self.model.get_input_embeddings()(ids)

        def logits(self, embeds: torch.Tensor, attention: torch.Tensor | None, keep: int = 0, past: object | None = None) -> torch.Tensor:
            assert past is None  # no prefill here: callers run every position
            with torch.inference_mode():
                positions = None if attention is None else (attention.cumsum(-1) - 1).clamp(min=0)
                return self.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, logits_to_keep=keep).logits

        @torch.inference_mode()
        def _decode(self, batch: EmbeddedBatch, options: GenerationOptions, on_step: Callable[[list[int]], None], stop=None) -> list[list[int]]:
            guard = loop_guard(batch.corrupted_rows, options)
            embeds, attention = batch.embeds, batch.attention
            out = torch.zeros((embeds.shape[0], 0), dtype=torch.long)
            done = torch.zeros(embeds.shape[0], dtype=torch.bool)
            for _ in range(options.max_new_tokens):
                if stop is not None and stop.is_set():
                    break
                scores = self.logits(embeds, attention)[:, -1].float()
                if guard is not None:
                    scores = guard(out, scores)
                nxt = torch.where(done, torch.tensor(self.pad_id), scores.argmax(-1))
                out = torch.cat([out, nxt[:, None]], dim=1)
                on_step(nxt.tolist())
                done |= torch.isin(nxt, torch.tensor(self.eos_ids))
                if done.all():
                    break
                embeds = torch.cat([embeds, self.embed(nxt[:, None])], dim=1)
                attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            return out.tolist()

        def generate_embeds(self, batch, options):
            return self._decode(batch, options, lambda ids: None)

        def stream_embeds(self, batch, options, emit_ids, stop) -> None:
            self._decode(batch, options, emit_ids, stop)

    return LoopRunner


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request, tmp_path_factory):
    """A randomly initialised tiny model of each architecture, saved and loaded back, with
    the bundled SmolLM2 tokenizer (its chat template, byte-level offsets)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig, LlamaConfig

    from eco_guard.runner.store import resolve_model
    from eco_guard.runner.transformers_runner import TransformersRunner

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("default", progress=False).directory))
    sizes = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(**sizes) if request.param == "llama" else Gemma3TextConfig(**sizes, sliding_window=64)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    reference = TransformersRunner.load(str(path), device="cpu", dtype="float32", progress=False)
    loop = _tiny_loop_runner_class()(reference.model, reference.tokenizer)
    return reference, loop


TINY_CHATS = [
    [{"role": "user", "content": "Who wrote 'The Bluest Eye', Toni Morrison?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
]


def test_a_second_backend_needs_only_the_backend_parts(tiny) -> None:
    """A hand-written loop, given only embed/generate/stream/logits, answers exactly as the
    transformers backend does: clean, corrupted (entities and prompt scopes), streamed,
    scored, async; on a Llama and on a Gemma 3 (scaled embeddings) architecture."""
    reference, loop = tiny
    assert isinstance(loop, Runner)
    opts = GenerationOptions(max_new_tokens=12)
    std, dim = loop.embedding_stats()
    assert (std, dim) == reference.embedding_stats()
    noise = Corruption("rand_noise_first_n", dims=dim, strength=3 * std, seed=4)
    cases = [row(c) for c in TINY_CHATS] + [
        row(TINY_CHATS[0], noise, MaskSpec(scope="entities")),
        row(TINY_CHATS[1], noise.with_seed(5)),
    ]
    for case in cases:  # one row at a time: a batch's padding would differ by float noise only
        assert loop.generate_ids([case], opts) == reference.generate_ids([case], opts)
        assert "".join(loop.stream(case, opts)) == loop.generate([case], opts)[0]
    assert loop.generate([cases[0]], opts) != loop.generate([cases[2]], opts)  # the corruption reached the model
    assert loop.score_choices(cases[3], ["A", "B"]) == pytest.approx(reference.score_choices(cases[3], ["A", "B"]), abs=1e-4)
    assert asyncio.run(loop.agenerate([cases[1]], opts)) == reference.generate([cases[1]], opts)
