"""``EcoGuardDocumentCompressor``: retrieved context is a leak path too.

In a RAG chain the retriever can hand the downstream model a passage about a forget
target even when the question never names it ("Tell me about the man who developed
relativity"), and the model then answers from the passage. This compressor, for
LangChain's ``ContextualCompressionRetriever``, drops (or marks) the passages the guard
flags: by the prompt classifier over each passage's pieces and their canonical forms
(:meth:`eco_guard.guard.Guard.check_documents`), and by the output stage's answer
classifier, since a passage reads like an answer. Every passage gets an audit record
of kind ``document``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun, Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from eco_guard.decision import Decision
from eco_guard.guard import Guard
from eco_guard.integration import GuardField


def passage_verdicts(guard: Guard, texts: Sequence[str]) -> list[tuple[bool, Decision]]:
    """Per passage: whether it is flagged (by either classifier), and its decision.

    A passage only the answer classifier flags gets the prompt decision with that target
    and ``stage: "output"`` (the answer-side classifier caught it).
    """
    decisions = guard.check_documents(list(texts))
    if guard.answers is None or not texts:
        return [(d.flagged, d) for d in decisions]
    out = []
    for d, v in zip(decisions, guard.answers.check(list(texts))):
        if not d.flagged and v.flagged:
            d = replace(d, flagged=True, target=v.target, stage="output", output_score=v.score, output_threshold=v.threshold)
        out.append((d.flagged, d))
    return out


class EcoGuardDocumentCompressor(BaseDocumentCompressor):
    """Drops (``mode="drop"``) or marks (``mode="mark"``: ``metadata["eco_guard"]`` on a copy) flagged passages.

    Example::

        from langchain_classic.retrievers import ContextualCompressionRetriever  # or your retriever wrapper
        retriever = ContextualCompressionRetriever(
            base_compressor=EcoGuardDocumentCompressor(guard="guard/"), base_retriever=store.as_retriever()
        )
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: GuardField
    mode: Literal["drop", "mark"] = Field(default="drop", description="drop flagged passages, or mark them")

    def _apply(self, documents: Sequence[Document], verdicts: Sequence[tuple[bool, Decision]]) -> list[Document]:
        if self.mode == "drop":
            return [doc for doc, (flagged, _) in zip(documents, verdicts) if not flagged]
        return [_marked(doc, d) if flagged else doc for doc, (flagged, d) in zip(documents, verdicts)]

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The passages that may reach the model (``query`` is not needed: the passages are judged on their own)."""
        return self._apply(documents, passage_verdicts(self.guard, [d.page_content for d in documents]))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async twin of :meth:`compress_documents` (classification runs off the event loop)."""
        import asyncio

        verdicts = await asyncio.to_thread(passage_verdicts, self.guard, [d.page_content for d in documents])
        return self._apply(documents, verdicts)


class EcoGuardRetriever(BaseRetriever):
    """A retriever wrapper: ``base_retriever``'s documents, less the passages the guard flags.

    The same as LangChain's ``ContextualCompressionRetriever`` with
    :class:`EcoGuardDocumentCompressor` (which lives in the separate ``langchain-classic``
    package), for chains that do not install it.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_retriever: BaseRetriever
    compressor: EcoGuardDocumentCompressor

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()})
        return list(self.compressor.compress_documents(docs, query))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        docs = await self.base_retriever.ainvoke(query, config={"callbacks": run_manager.get_child()})
        return list(await self.compressor.acompress_documents(docs, query))


def _marked(doc: Document, decision: Decision) -> Document:
    info: dict[str, Any] = {"flagged": True, "target": decision.target, "score": decision.score, "stage": decision.stage}
    return Document(page_content=doc.page_content, metadata={**doc.metadata, "eco_guard": info}, id=doc.id)


__all__ = ["EcoGuardDocumentCompressor", "EcoGuardRetriever"]
