"""LangChain integration: chat model (standard unit suite), router, agent middleware.

Real bundled models throughout; only the *downstream* models are langchain_core's
deterministic fakes, so that pass-through can be checked for exact identity. The guard
is fitted from examples/forget_france.yaml (fixed strength: fitting takes seconds).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_eco_guard import DECISION_EVENT, EcoGuardChatModel, EcoGuardMiddleware, EcoGuardRouter
from langchain_eco_guard._convert import StopCutter

from tests.integration_support import FLAGGED, PASSED, example_guard_dir, guard  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def eco(guard: Any) -> EcoGuardChatModel:
    return EcoGuardChatModel(guard=guard, max_tokens=12)


# ---------------------------------------------------------------- standard unit suite


class TestEcoGuardChatModelStandard(ChatModelUnitTests):
    """langchain-tests' standard unit tests; tools, structured output and images are unsupported."""

    @pytest.fixture(autouse=True)
    def _guard(self, guard: Any) -> None:
        type(self).guard_obj = guard

    @property
    def chat_model_class(self) -> type[EcoGuardChatModel]:
        return EcoGuardChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"guard": type(self).guard_obj}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False


# ---------------------------------------------------------------- chat model


def test_guard_path_is_accepted(example_guard_dir: Path) -> None:
    model = EcoGuardChatModel(guard=str(example_guard_dir))
    assert model.guard.target_ids == ["france"]
    assert EcoGuardChatModel(guard=example_guard_dir).guard is model.guard  # loaded once per directory


def test_stop_cutter_catches_a_stop_split_across_pieces() -> None:
    cutter = StopCutter(["STOP"])
    out = "".join(cutter.feed(p) for p in ["abc S", "TO", "P tail"])
    assert out == "abc " and cutter.done
    assert StopCutter(None).cut("keep all") == "keep all"


@pytest.mark.slow
def test_chat_model_decision_in_metadata(eco: EcoGuardChatModel) -> None:
    flagged = eco.invoke(FLAGGED)
    passed = eco.invoke(PASSED)
    assert flagged.response_metadata["eco_guard"]["action"] == "corrupt"
    assert passed.response_metadata["eco_guard"]["action"] == "pass"
    assert "Canberra" in passed.text and "Paris" not in flagged.text


@pytest.mark.slow
def test_chat_model_streams_tokens_with_callbacks(eco: EcoGuardChatModel) -> None:
    tokens: list[str] = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            tokens.append(token)

    chunks = list(eco.stream(PASSED, {"callbacks": [Collect()]}))
    # the output stage holds each sentence until it has passed: text chunks are whole sentences
    texts = [c.text for c in chunks if c.content]
    assert texts and all(t.rstrip().endswith((".", "!", "?")) for t in texts[:-1])
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[0].response_metadata["eco_guard"]["action"] == "pass"
    assert "".join(tokens) == "".join(c.text for c in chunks) == eco.invoke(PASSED).text


@pytest.mark.slow
async def test_chat_model_async_twins(eco: EcoGuardChatModel) -> None:
    asyncio.get_running_loop()
    answer = await eco.ainvoke(PASSED)
    chunks = [c async for c in eco.astream(PASSED)]
    assert [c for c in chunks if c.content]
    assert "".join(c.text for c in chunks) == answer.text == eco.invoke(PASSED).text


# ---------------------------------------------------------------- router


def _fake(text: str = "downstream answer") -> FakeListChatModel:
    return FakeListChatModel(responses=[text])


class Spy(FakeListChatModel):
    """A downstream that records every call it gets."""

    calls: list[Any] = []

    def _call(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.calls.append(messages)
        return super()._call(messages, stop, run_manager, **kwargs)


def test_router_pass_through_is_exact(guard: Any) -> None:
    direct = GenericFakeChatModel(messages=iter([AIMessage(content="same words", id="fixed")])).invoke(PASSED)
    routed = EcoGuardRouter(
        guard=guard, downstream=GenericFakeChatModel(messages=iter([AIMessage(content="same words", id="fixed")]))
    ).invoke(PASSED)
    assert routed == direct


def test_router_returns_the_downstream_object_and_config(guard: Any) -> None:
    seen: dict[str, Any] = {}
    result = object()

    def downstream(value: Any, config: Any) -> Any:
        seen["input"], seen["config"] = value, config
        return result

    router = EcoGuardRouter(guard=guard, downstream=RunnableLambda(downstream), output="message")
    messages = [HumanMessage(content=PASSED)]
    out = router.invoke(messages, {"tags": ["t1"], "metadata": {"k": "v"}, "configurable": {"x": 1}})
    assert out is result and seen["input"] is messages
    assert "t1" in seen["config"]["tags"] and seen["config"]["metadata"]["k"] == "v"
    assert seen["config"]["configurable"]["x"] == 1


def test_router_answers_in_the_downstreams_type_or_refuses_to_guess(guard: Any) -> None:
    """A flagged answer never comes from the downstream, so the router must know the
    downstream's output type to answer in it: read from its declaration, or given."""
    assert EcoGuardRouter(guard=guard, downstream=_fake("x") | StrOutputParser()).OutputType is str
    assert EcoGuardRouter(guard=guard, downstream=_fake("x")).OutputType is _fake("x").OutputType
    with pytest.raises(ValueError, match="output='text' or output='message'"):
        EcoGuardRouter(guard=guard, downstream=RunnableLambda(lambda value: "an undeclared str"))
    assert EcoGuardRouter(guard=guard, downstream=RunnableLambda(lambda value: "text"), output="text").OutputType is str


@pytest.mark.slow
def test_router_never_calls_downstream_for_flagged(guard: Any, eco: EcoGuardChatModel) -> None:
    spy = Spy(responses=["should not appear"])
    spy.calls = []
    router = EcoGuardRouter(guard=guard, downstream=spy, eco_model=eco)
    answer = router.invoke(FLAGGED)
    chunks = list(router.stream(FLAGGED))
    batch = router.batch([FLAGGED, FLAGGED])
    assert spy.calls == []
    assert answer.response_metadata["eco_guard"]["action"] == "corrupt"
    assert len(chunks) > 1 and all(b.text == answer.text for b in batch)


@pytest.mark.slow
def test_router_text_chain_and_decision_event(guard: Any, eco: EcoGuardChatModel) -> None:
    events: list[dict[str, Any]] = []

    class Collect(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == DECISION_EVENT:
                events.append(data)

    downstream = _fake("plain") | StrOutputParser()
    router = EcoGuardRouter(guard=guard, downstream=downstream, eco_model=eco)
    assert router.invoke(PASSED, {"callbacks": [Collect()]}) == "plain"
    flagged = router.invoke(FLAGGED, {"callbacks": [Collect()]})
    assert isinstance(flagged, str) and flagged != "plain"
    assert [e["action"] for e in events] == ["pass", "corrupt"]
    composed = EcoGuardRouter(guard=guard, downstream=_fake("x"), eco_model=eco) | StrOutputParser()
    assert composed.invoke(PASSED) == "x"


def test_router_stream_pass_through(guard: Any) -> None:
    direct = list(GenericFakeChatModel(messages=iter([AIMessage(content="one two three")])).stream(PASSED))
    routed = list(
        EcoGuardRouter(guard=guard, downstream=GenericFakeChatModel(messages=iter([AIMessage(content="one two three")]))).stream(PASSED)
    )
    # the output stage regroups the downstream's chunks into checked sentences; the text is the downstream's
    assert len(direct) > 1 and "".join(c.content for c in routed) == "".join(c.content for c in direct)
    two = "First sentence here. Second one follows."
    routed = list(EcoGuardRouter(guard=guard, downstream=GenericFakeChatModel(messages=iter([AIMessage(content=two)]))).stream(PASSED))
    assert [c.content for c in routed] == ["First sentence here. ", "Second one follows."]


async def test_router_astream_and_abatch_pass_through(guard: Any) -> None:
    router = EcoGuardRouter(guard=guard, downstream=GenericFakeChatModel(messages=iter([AIMessage(content="a b c")] * 3)))
    chunks = [c async for c in router.astream(PASSED)]
    assert chunks and "".join(c.content for c in chunks) == "a b c"
    outs = await router.abatch([PASSED, PASSED])
    assert [o.content for o in outs] == ["a b c", "a b c"]


@pytest.mark.slow
async def test_router_16_concurrent_ainvokes_match_their_inputs(guard: Any) -> None:
    """Mixed flagged/unflagged requests at once: each result belongs to its own input."""
    eco = EcoGuardChatModel(guard=guard, max_tokens=6)

    def echo(value: Any) -> AIMessage:
        return AIMessage(content=f"echo:{value}")

    router = EcoGuardRouter(guard=guard, downstream=RunnableLambda(echo), eco_model=eco, output="message")
    countries = ["Australia", "Japan", "Germany", "Brazil", "Canada", "Kenya", "Chile", "Norway"]
    prompts = []
    for i, country in enumerate(countries):
        prompts.append(f"What is the capital of {country}?")
        prompts.append(FLAGGED if i % 2 == 0 else "Who was Napoleon Bonaparte?")
    results = await asyncio.gather(*(router.ainvoke(p) for p in prompts))
    for prompt, result in zip(prompts, results):
        if "France" in prompt or "Napoleon" in prompt:
            assert result.response_metadata["eco_guard"]["action"] == "corrupt", prompt
            assert not result.content.startswith("echo:")
        else:
            assert result.content == f"echo:{prompt}"
    solo = {p: (await router.ainvoke(p)).content for p in (FLAGGED, "Who was Napoleon Bonaparte?")}
    for prompt, result in zip(prompts, results):
        if prompt in solo:
            assert result.content == solo[prompt]  # same seed per prompt: same answer, whatever ran beside it


# ---------------------------------------------------------------- agent middleware


def _agent(guard: Any, eco: EcoGuardChatModel, script: list[AIMessage]) -> tuple[Any, list[Any]]:
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    calls: list[Any] = []

    class ToolModel(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> "ToolModel":
            return self

        def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(messages)
            return super()._generate(messages, *args, **kwargs)

    @tool
    def population(country: str) -> str:
        """Population of a country."""
        return "about 27 million"

    agent = create_agent(model=ToolModel(messages=iter(script)), tools=[population], middleware=[EcoGuardMiddleware(guard, eco_model=eco)])
    return agent, calls


def _script() -> list[AIMessage]:
    return [
        AIMessage(content="", tool_calls=[{"name": "population", "args": {"country": "Australia"}, "id": "c1"}]),
        AIMessage(content="About 27 million."),
    ]


@pytest.mark.slow
def test_middleware_passes_unflagged_and_diverts_flagged(guard: Any, eco: EcoGuardChatModel) -> None:
    agent, calls = _agent(guard, eco, _script())
    state = agent.invoke({"messages": [{"role": "user", "content": "How many people live in Australia?"}]})
    assert [m.type for m in state["messages"]] == ["human", "ai", "tool", "ai"]
    assert state["messages"][-1].content == "About 27 million." and len(calls) == 2
    agent, calls = _agent(guard, eco, _script())
    state = agent.invoke({"messages": [{"role": "user", "content": FLAGGED}]})
    assert calls == [] and [m.type for m in state["messages"]] == ["human", "ai"]
    assert state["messages"][-1].response_metadata["eco_guard"]["action"] == "corrupt"


@pytest.mark.slow
async def test_middleware_async(guard: Any, eco: EcoGuardChatModel) -> None:
    agent, calls = _agent(guard, eco, _script())
    state = await agent.ainvoke({"messages": [{"role": "user", "content": FLAGGED}]})
    assert calls == [] and state["messages"][-1].response_metadata["eco_guard"]["action"] == "corrupt"
    agent, calls = _agent(guard, eco, _script())
    state = await agent.ainvoke({"messages": [{"role": "user", "content": "How many people live in Australia?"}]})
    assert state["messages"][-1].content == "About 27 million." and len(calls) == 2
