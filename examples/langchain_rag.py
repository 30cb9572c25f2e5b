"""A LangChain RAG chain guarded by ``EcoGuardRouter``, offline on the bundled models.

The chain retrieves from an in-memory vector store (embeddings: the bundled MiniLM
encoder via ``EcoGuardEmbeddings``) and answers with the bare bundled SmolLM2. The router
sits in front of the whole chain: a question about France never reaches retrieval or the
chain's model and is answered from corrupted embeddings instead; every other question
runs through the chain, whose retriever drops passages about France
(``EcoGuardRetriever`` over ``EcoGuardDocumentCompressor``) and whose answer the output
stage checks before it is returned.

    python examples/langchain_rag.py [--guard DIR] [--max-new-tokens N]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import DOCUMENTS, QUESTIONS, guard_dir, parser

def build_chain(guard: Any, max_new_tokens: int) -> Any:
    """The RAG chain, and the router that guards it."""
    from langchain_core.messages import AIMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    from eco_guard.runner.base import GenerationOptions
    from langchain_eco_guard import (
        EcoGuardChatModel,
        EcoGuardDocumentCompressor,
        EcoGuardEmbeddings,
        EcoGuardRetriever,
        EcoGuardRouter,
        to_chat,
    )

    store = InMemoryVectorStore.from_texts(DOCUMENTS, EcoGuardEmbeddings(guard.classifier.encoder))
    # Retrieved context is a leak path too: passages about a forget target are dropped
    # before the chain's model reads them, even when the question never names the target.
    retriever = EcoGuardRetriever(
        base_retriever=store.as_retriever(search_kwargs={"k": 2}), compressor=EcoGuardDocumentCompressor(guard=guard)
    )
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer in one sentence using the context."), ("user", "Context:\n{context}\n\nQuestion: {question}")]
    )
    options = GenerationOptions(max_new_tokens=max_new_tokens)

    def local_model(prompt_value: Any) -> AIMessage:
        """The chain's own model: the bare bundled SmolLM2, no guard, no corruption."""
        return AIMessage(content=guard.answer_unguarded([to_chat(prompt_value.to_messages())], options)[0])

    rag = (
        {"context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)), "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(local_model)
        | StrOutputParser()
    )
    eco = EcoGuardChatModel(guard=guard, max_tokens=max_new_tokens)
    return EcoGuardRouter(guard=guard, downstream=rag, eco_model=eco)


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the questions through the guarded chain; returns question -> answer."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    from langchain_core.callbacks import BaseCallbackHandler

    from eco_guard import Guard

    with tempfile.TemporaryDirectory(prefix="eco-rag-") as tmp:
        guard = Guard.load(guard_dir(args.guard, Path(tmp)))
        guarded = build_chain(guard, args.max_new_tokens)

        class ShowDecision(BaseCallbackHandler):
            """The router reports every decision, passed ones too, as a custom callback event."""

            def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
                print(f"  decision: action={data['action']} target={data['target']} score={data['score']:.3f}")

        answers = {}
        for question in QUESTIONS:
            print(f"Q: {question}")
            answers[question] = guarded.invoke(question, {"callbacks": [ShowDecision()]})
            print(f"A: {answers[question]}\n")
        guard.close()
    return answers


if __name__ == "__main__":
    main(sys.argv[1:])
