"""``EcoGuardNodePostprocessor``: keep retrieved context about a forget target out of the prompt.

Guarding only the question is not enough in RAG: a harmless question can retrieve a
passage about the forgotten target, and the model would then repeat it. The
postprocessor judges each retrieved passage with :meth:`eco_guard.Guard.check_documents`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from eco_guard.decision import Decision
from eco_guard.integration import GuardField, diverts

#: Metadata key that ``mode="mark"`` sets on flagged nodes (hidden from the LLM and the embedder).
MARK_KEY = "eco_guard"


class EcoGuardNodePostprocessor(BaseNodePostprocessor):
    """Drops (``mode="drop"``) or marks (``mode="mark"``) retrieved nodes about a forget target.

    ``drop`` removes nodes whose decision is ``corrupt`` or ``refuse``; shadow-mode
    (``flag``) targets are only logged, as everywhere else. ``mark`` keeps every node
    and adds ``metadata["eco_guard"]`` (flagged, target, score, action) to copies of the
    flagged ones, so the docstore's nodes are never modified.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: GuardField = Field(description="A fitted guard, or the path of a fitted-guard directory.")
    mode: Literal["drop", "mark"] = Field(default="drop", description="drop flagged nodes, or mark them")

    @classmethod
    def class_name(cls) -> str:
        return "EcoGuardNodePostprocessor"

    @staticmethod
    def _texts(nodes: Sequence[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]

    def _apply(self, nodes: list[NodeWithScore], decisions: Sequence[Decision]) -> list[NodeWithScore]:
        if self.mode == "drop":
            return [n for n, d in zip(nodes, decisions) if not diverts(d)]
        return [self._mark(n, d) if d.flagged else n for n, d in zip(nodes, decisions)]

    @staticmethod
    def _mark(item: NodeWithScore, decision: Decision) -> NodeWithScore:
        node = item.node.model_copy(deep=True)
        node.metadata[MARK_KEY] = {
            "flagged": True,
            "target": decision.target,
            "score": decision.score,
            "action": decision.action,
        }
        for excluded in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
            if MARK_KEY not in excluded:
                excluded.append(MARK_KEY)
        return NodeWithScore(node=node, score=item.score)

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        return self._apply(nodes, self.guard.check_documents(self._texts(nodes)))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        return self._apply(nodes, await self.guard.acheck_documents(self._texts(nodes)))


__all__ = ["MARK_KEY", "EcoGuardNodePostprocessor"]
