"""Sentence embeddings on the CPU; one model per process, loaded once."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from rag.settings import ConfigurationError, EmbeddingBackend
from rag.tokens import resolve_model_path

__all__ = ["Embedder", "decode_vector", "decode_vectors", "encode_vectors", "load_embedder"]

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


class Embedder:
    def __init__(
        self, model: str, *, threads: int = 1, backend: EmbeddingBackend = "torch"
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if backend not in get_args(EmbeddingBackend):
            raise ConfigurationError(
                f"SCRIBES_EMBEDDING_BACKEND is {backend!r}; set it to torch or onnx"
            )
        if backend == "onnx":
            from rag.onnx_model import OnnxSentenceModel, onnxruntime_module

            onnxruntime_module()  # not installed: say so before seconds of loading
        import torch
        from sentence_transformers import SentenceTransformer  # heavy: torch comes with it

        # One query gains nothing from a second thread, and on a shared machine torch's
        # threads fight the other pools for the cores: measured in bench/, one thread
        # kept embed p95 at 20 ms under load where two threads reached 190 ms.
        torch.set_num_threads(threads)
        self._torch = torch

        started = time.perf_counter()
        model_dir = resolve_model_path(model)
        self._model: Any = SentenceTransformer(str(model_dir), device="cpu")
        if backend == "onnx":
            # onnxruntime's own threads, fixed for the session: the same count as torch's.
            self._model = OnnxSentenceModel.export(self._model, model_dir, threads=threads)
        self._lock = threading.Lock()
        self.model_name = model
        self.backend: EmbeddingBackend = backend
        dimension = self._model.get_embedding_dimension()
        assert dimension is not None
        self.dimension: int = int(dimension)
        log.info(
            "loaded embedding model %s on %s in %.1f s",
            model,
            backend,
            time.perf_counter() - started,
        )

    def embed(
        self, texts: Sequence[str], *, batch_size: int = 64, threads: int | None = None
    ) -> Vectors:
        """Unit-length float32 vectors, one row per text; `threads`: torch threads for this
        call only (the process's count is put back after it)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # torch is not made faster by two threads racing for two cores: one call at a time.
        with self._lock:
            usual = self._torch.get_num_threads()
            if threads is not None and threads != usual:
                self._torch.set_num_threads(threads)
            try:
                vectors = self._model.encode(
                    list(texts),
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            finally:
                if threads is not None and threads != usual:
                    self._torch.set_num_threads(usual)
        return np.asarray(vectors, dtype=np.float32)


@lru_cache(maxsize=2)
def load_embedder(model: str, *, threads: int = 1, backend: EmbeddingBackend = "torch") -> Embedder:
    return Embedder(model, threads=threads, backend=backend)


def encode_vectors(vectors: Vectors) -> str:
    """One vector or a matrix of them as compact text for JSON and Redis: base64 of
    little-endian float32, row after row."""
    return base64.b64encode(np.asarray(vectors, dtype="<f4").tobytes()).decode()


def decode_vectors(text: str, dimension: int) -> Vectors:
    """The matrix `encode_vectors` wrote, one row per vector."""
    return decode_vector(text).reshape(-1, dimension)


def decode_vector(text: str) -> Vectors:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)
