"""A LangChain v1 agent (``create_agent``) with one tool, guarded by ``EcoGuardMiddleware``.

What is real and what is scripted: the guard, the classifier and the ECO model (the
bundled SmolLM2 answering from corrupted embeddings) are real. The agent's own model is
a scripted fake chat model from ``langchain_core`` (so the example runs offline with no
API key): it calls the ``population`` tool once, then answers from the tool's result.
A question about France is flagged by the middleware before that model is called, so
the script is not consumed by it; the population question runs the full tool loop.

    python examples/langchain_agent.py [--guard DIR] [--max-new-tokens N]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import guard_dir, parser

POPULATIONS = {"australia": "about 27 million", "japan": "about 124 million", "france": "about 68 million"}
QUESTIONS = ["How many people live in France?", "How many people live in Australia?"]


def population(country: str) -> str:
    """Return the population of a country."""
    return POPULATIONS.get(country.strip().lower(), "unknown")


def scripted_model() -> Any:
    """The agent's model: a fake chat model that calls the tool, then answers."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class ScriptedToolModel(GenericFakeChatModel):
        """GenericFakeChatModel that accepts tools (it replays its script whatever they are)."""

        def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedToolModel":
            return self

    def script() -> Iterator[AIMessage]:
        yield AIMessage(content="", tool_calls=[{"name": "population", "args": {"country": "Australia"}, "id": "call-1"}])
        yield AIMessage(content="Australia has about 27 million people.")

    return ScriptedToolModel(messages=script())


def main(argv: list[str] | None = None) -> dict[str, list[Any]]:
    """Ask both questions; returns question -> the agent's messages."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    from eco_guard import Guard
    from langchain_eco_guard import EcoGuardChatModel, EcoGuardMiddleware

    with tempfile.TemporaryDirectory(prefix="eco-agent-") as tmp:
        guard = Guard.load(guard_dir(args.guard, Path(tmp)))
        middleware = EcoGuardMiddleware(guard, eco_model=EcoGuardChatModel(guard=guard, max_tokens=args.max_new_tokens))
        agent = create_agent(model=scripted_model(), tools=[tool(population)], middleware=[middleware])
        transcripts = {}
        for question in QUESTIONS:
            print(f"Q: {question}")
            state = agent.invoke({"messages": [{"role": "user", "content": question}]})
            for message in state["messages"][1:]:
                calls = getattr(message, "tool_calls", None)
                shown = f"calls {calls[0]['name']}({calls[0]['args']})" if calls else message.text
                decision = message.response_metadata.get("eco_guard") if message.type == "ai" else None
                origin = f" [ECO model, action={decision['action']}]" if decision else ""
                print(f"  {message.type}{origin}: {shown}")
            transcripts[question] = state["messages"]
            print()
        guard.close()
    return transcripts


if __name__ == "__main__":
    main(sys.argv[1:])
