"""A LlamaIndex ``VectorStoreIndex`` query engine on ``EcoGuardLLM`` + ``EcoGuardNodePostprocessor``.

Everything is offline: ``Settings`` gets the bundled MiniLM encoder (``EcoGuardEmbedding``)
and the guarded bundled SmolLM2 (``EcoGuardLLM``), so nothing reaches for OpenAI.
Retrieved passages about France are dropped by the postprocessor before they reach the
prompt; the LLM itself answers flagged prompts from corrupted embeddings.

    python examples/llamaindex_query.py [--guard DIR] [--max-new-tokens N]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import DOCUMENTS, QUESTIONS, guard_dir, parser

def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Query the index; returns question -> LlamaIndex response."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    from llama_index.core import Document, Settings, VectorStoreIndex

    from eco_guard import Guard
    from llama_index_eco_guard import EcoGuardEmbedding, EcoGuardLLM, EcoGuardNodePostprocessor

    with tempfile.TemporaryDirectory(prefix="eco-llamaindex-") as tmp:
        guard = Guard.load(guard_dir(args.guard, Path(tmp)))
        Settings.embed_model = EcoGuardEmbedding(guard.classifier.encoder)
        Settings.llm = EcoGuardLLM(guard=guard, max_new_tokens=args.max_new_tokens)
        index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS])
        engine = index.as_query_engine(similarity_top_k=2, node_postprocessors=[EcoGuardNodePostprocessor(guard=guard)])
        responses = {}
        for question in QUESTIONS:
            print(f"Q: {question}")
            retrieved = index.as_retriever(similarity_top_k=2).retrieve(question)
            response = engine.query(question)
            print(f"  retrieved {len(retrieved)} passages, {len(response.source_nodes)} kept after the guard")
            print(f"A: {str(response).strip()}\n")
            responses[question] = response
        # With every passage dropped LlamaIndex answers "Empty Response" without calling
        # the LLM; asked directly, the guarded LLM answers from corrupted embeddings.
        direct = Settings.llm.complete(QUESTIONS[1])
        print(f"LLM directly: {direct.text.strip()}  [action={direct.additional_kwargs['eco_guard']['action']}]")
        responses["direct"] = direct
        guard.close()
    return responses


if __name__ == "__main__":
    main(sys.argv[1:])
