"""LlamaIndex integration: EcoGuardLLM (sync, streaming, real async) and the node postprocessor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.schema import NodeWithScore, TextNode

from llama_index_eco_guard import MARK_KEY, EcoGuardEmbedding, EcoGuardLLM, EcoGuardNodePostprocessor

from tests.integration_support import FLAGGED, PASSED, example_guard_dir, guard  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def llm(guard: Any) -> EcoGuardLLM:
    return EcoGuardLLM(guard=guard, max_new_tokens=12)


def _nodes() -> list[NodeWithScore]:
    texts = [
        "Canberra is the capital city of Australia.",
        "Paris is the capital of France, and the Seine flows through it.",
        "Tokyo is the capital of Japan.",
    ]
    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0 - i / 10) for i, t in enumerate(texts)]


def test_metadata_and_path(example_guard_dir: Path) -> None:
    llm = EcoGuardLLM(guard=str(example_guard_dir), max_new_tokens=7)
    meta = llm.metadata
    assert meta.is_chat_model and not meta.is_function_calling_model
    assert meta.num_output == 7 and meta.context_window == 8192


def test_postprocessor_drops_and_marks(guard: Any) -> None:
    nodes = _nodes()
    kept = EcoGuardNodePostprocessor(guard=guard).postprocess_nodes(nodes, query_str="capitals")
    assert [n.node.node_id for n in kept] == ["n0", "n2"]
    marked = EcoGuardNodePostprocessor(guard=guard, mode="mark").postprocess_nodes(nodes)
    assert [n.node.node_id for n in marked] == ["n0", "n1", "n2"]
    assert marked[1].node.metadata[MARK_KEY]["target"] == "france"
    assert MARK_KEY not in nodes[1].node.metadata  # the retrieved node itself is left alone
    assert MARK_KEY not in marked[0].node.metadata
    assert MARK_KEY in marked[1].node.excluded_llm_metadata_keys


async def test_postprocessor_async(guard: Any) -> None:
    kept = await EcoGuardNodePostprocessor(guard=guard).apostprocess_nodes(_nodes())
    assert [n.node.node_id for n in kept] == ["n0", "n2"]


def test_embedding_matches_encoder(guard: Any) -> None:
    embed = EcoGuardEmbedding(guard.classifier.encoder)
    vector = embed.get_query_embedding(PASSED)
    assert len(vector) == guard.classifier.encoder.dim
    assert embed.get_text_embedding_batch([PASSED, FLAGGED])[0] == pytest.approx(vector, abs=1e-5)


@pytest.mark.slow
def test_complete_chat_and_stream(llm: EcoGuardLLM) -> None:
    passed = llm.complete(PASSED)
    flagged = llm.complete(FLAGGED)
    assert "Canberra" in passed.text and passed.additional_kwargs["eco_guard"]["action"] == "pass"
    assert flagged.additional_kwargs["eco_guard"]["action"] == "corrupt" and "Paris" not in flagged.text
    chat = llm.chat([ChatMessage(role=MessageRole.USER, content=PASSED)])
    assert chat.message.content == passed.text
    pieces = list(llm.stream_complete(PASSED))
    assert pieces and pieces[-1].text == passed.text  # whole sentences: the output stage holds each until checked
    assert "".join(p.delta or "" for p in pieces) == passed.text
    chat_pieces = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=PASSED)]))
    assert chat_pieces and chat_pieces[-1].message.content == passed.text


@pytest.mark.slow
async def test_async_does_not_block_the_loop(llm: EcoGuardLLM) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    done = await llm.acomplete(PASSED)
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    assert "Canberra" in done.text
    assert ticks >= max(3, int(elapsed / 0.01 * 0.3))  # the loop kept running while the model generated
    chat = await llm.achat([ChatMessage(role=MessageRole.USER, content=FLAGGED)])
    assert chat.additional_kwargs["eco_guard"]["action"] == "corrupt"
    pieces = [p async for p in await llm.astream_complete(PASSED)]
    assert pieces and pieces[-1].text == done.text
    chat_pieces = [p async for p in await llm.astream_chat([ChatMessage(role=MessageRole.USER, content=PASSED)])]
    assert chat_pieces[-1].message.content == done.text
