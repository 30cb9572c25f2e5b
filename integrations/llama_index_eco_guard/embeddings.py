"""``EcoGuardEmbedding``: LlamaIndex embeddings from eco-guard's bundled sentence encoder.

With it (and :class:`EcoGuardLLM`) set on ``Settings``, an index never tries to reach
OpenAI: everything runs offline on the bundled models.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import PrivateAttr

from eco_guard.classifier import Encoder, resolve_encoder_path


class EcoGuardEmbedding(BaseEmbedding):
    """Unit-length sentence embeddings (all-MiniLM-L6-v2 by default, 384 dims).

    Args:
        encoder: an :class:`eco_guard.classifier.Encoder` to share (e.g. a guard's
            ``guard.classifier.encoder``), or ``None`` to load the bundled one.
    """

    _encoder: Encoder = PrivateAttr()

    def __init__(self, encoder: Encoder | None = None, **kwargs: Any) -> None:
        encoder = encoder if encoder is not None else Encoder(resolve_encoder_path("default"))
        kwargs.setdefault("model_name", encoder.name)
        super().__init__(**kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "EcoGuardEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.encode([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encoder.encode([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encoder.encode(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


__all__ = ["EcoGuardEmbedding"]
