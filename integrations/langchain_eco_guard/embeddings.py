"""``EcoGuardEmbeddings``: LangChain embeddings from eco-guard's bundled sentence encoder.

Lets a RAG chain run fully offline with the same encoder the guard's classifier uses,
instead of reaching for a hosted embedding API.
"""

from __future__ import annotations

import asyncio
from langchain_core.embeddings import Embeddings

from eco_guard.classifier import Encoder, resolve_encoder_path


class EcoGuardEmbeddings(Embeddings):
    """Unit-length sentence embeddings (all-MiniLM-L6-v2 by default, 384 dims).

    Args:
        encoder: an :class:`eco_guard.classifier.Encoder` to share (e.g. a guard's
            ``guard.classifier.encoder``), or ``None`` to load the bundled one.
    """

    def __init__(self, encoder: Encoder | None = None) -> None:
        self.encoder = encoder if encoder is not None else Encoder(resolve_encoder_path("default"))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encoder.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encoder.encode([text])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    def __repr__(self) -> str:
        return f"EcoGuardEmbeddings(encoder={self.encoder.name!r})"


__all__ = ["EcoGuardEmbeddings"]
