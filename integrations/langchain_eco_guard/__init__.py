"""LangChain integration of eco-guard: a guarded chat model, a router, an agent middleware.

- :class:`EcoGuardChatModel`: a chat model that answers through the guard with the local model.
- :class:`EcoGuardRouter`: put the guard in front of any chat model or chain.
- :class:`EcoGuardMiddleware`: guard every model call of a ``create_agent`` agent.
- :class:`EcoGuardEmbeddings`: offline embeddings from the bundled encoder, for RAG.
- :func:`to_chat`: LangChain messages as an eco-guard chat, for your own glue code.
- :class:`EcoGuardDocumentCompressor`: drop retrieved passages about a forget target
  (for ``ContextualCompressionRetriever``), and :class:`EcoGuardRetriever`, a retriever wrapper doing the same.

Every class takes ``guard=`` as a :class:`eco_guard.Guard` or a fitted-guard directory.
"""

from langchain_eco_guard.chat_models import EcoGuardChatModel
from langchain_eco_guard.compressor import EcoGuardDocumentCompressor, EcoGuardRetriever
from langchain_eco_guard.embeddings import EcoGuardEmbeddings
from langchain_eco_guard.middleware import EcoGuardMiddleware
from langchain_eco_guard._convert import to_chat
from langchain_eco_guard.router import DECISION_EVENT, EcoGuardRouter

__all__ = [
    "DECISION_EVENT",
    "EcoGuardChatModel",
    "EcoGuardDocumentCompressor",
    "EcoGuardEmbeddings",
    "EcoGuardMiddleware",
    "EcoGuardRetriever",
    "EcoGuardRouter",
    "to_chat",
]
