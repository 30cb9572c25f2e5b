"""LlamaIndex integration of eco-guard: a guarded LLM, a node postprocessor, offline embeddings.

- :class:`EcoGuardLLM`: the guard and its local model as a LlamaIndex ``CustomLLM``.
- :class:`EcoGuardNodePostprocessor`: drop or mark retrieved nodes about a forget target.
- :class:`EcoGuardEmbedding`: embeddings from the bundled encoder (no OpenAI needed).

Every class takes ``guard=`` as a :class:`eco_guard.Guard` or a fitted-guard directory.
"""

from llama_index_eco_guard.embeddings import EcoGuardEmbedding
from llama_index_eco_guard.llms import EcoGuardLLM
from llama_index_eco_guard.postprocessor import MARK_KEY, EcoGuardNodePostprocessor

__all__ = ["MARK_KEY", "EcoGuardEmbedding", "EcoGuardLLM", "EcoGuardNodePostprocessor"]
