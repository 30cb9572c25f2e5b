"""``EcoGuardMiddleware``: an agent middleware that answers flagged model calls with ECO.

Each model call of an agent (``langchain.agents.create_agent``) is classified on its
user turns. A flagged call is answered by the ECO model from corrupted embeddings (or
refused), so the agent's own model never sees it; that answer calls no tools, so the
agent ends its turn there. Every other call goes to the agent's model unchanged, and
its answer is checked by the output stage before the agent sees it: an answer that
reveals a target is replaced (its tool calls with it), see :mod:`langchain_eco_guard._screen`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable


from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import BaseMessage

from eco_guard.decision import Decision
from eco_guard.integration import GuardLike, as_guard, diverts

from ._convert import has_user_text, to_chat
from ._screen import ascreen_output, screen_output
from .chat_models import DECISION_KWARG, EcoGuardChatModel


class EcoGuardMiddleware(AgentMiddleware):
    """Guards every model call of an agent.

    Args:
        guard: a fitted guard, or the path of a fitted-guard directory.
        eco_model: the model for flagged calls; by default an :class:`EcoGuardChatModel`
            over the same guard.
    """

    def __init__(self, guard: GuardLike, *, eco_model: EcoGuardChatModel | None = None) -> None:
        super().__init__()
        self.guard = as_guard(guard)
        self.eco_model = eco_model if eco_model is not None else EcoGuardChatModel(guard=self.guard)

    @property
    def name(self) -> str:
        return "EcoGuardMiddleware"

    @staticmethod
    def _eco_messages(request: ModelRequest) -> list[BaseMessage]:
        """What the ECO model answers: the agent's system prompt and its conversation."""
        system = [request.system_message] if request.system_message is not None else []
        return [*system, *request.messages]

    def _decide(self, request: ModelRequest) -> Decision | None:
        chat = to_chat(request.messages)
        return self.guard.check(chat) if has_user_text(chat) else None

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse:
        decision = self._decide(request)
        if decision is None:
            return handler(request)
        if not diverts(decision):
            response = handler(request)
            chat = to_chat(request.messages)
            return _with_results(response, [screen_output(self.guard, chat, decision, m)[0] for m in response.result])
        answer = self.eco_model.invoke(self._eco_messages(request), **{DECISION_KWARG: decision})
        return ModelResponse(result=[answer])

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        chat = to_chat(request.messages)
        decision = await self.guard.acheck(chat) if has_user_text(chat) else None
        if decision is None:
            return await handler(request)
        if not diverts(decision):
            response = await handler(request)
            return _with_results(response, [(await ascreen_output(self.guard, chat, decision, m))[0] for m in response.result])
        answer = await self.eco_model.ainvoke(self._eco_messages(request), **{DECISION_KWARG: decision})
        return ModelResponse(result=[answer])


def _with_results(response: ModelResponse, result: list[BaseMessage]) -> ModelResponse:
    """``response`` itself when nothing was replaced, so passed answers stay the model's objects."""
    if all(a is b for a, b in zip(result, response.result)):
        return response
    return ModelResponse(result=result, structured_response=response.structured_response)


__all__ = ["EcoGuardMiddleware"]
