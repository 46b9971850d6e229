"""`SCRIBES_EMBEDDING_BACKEND=onnx`: the same vectors as torch, or a clear refusal."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from rag.embedding import Embedder, load_embedder
from rag.settings import ConfigurationError, Settings
from rag.tokens import resolve_model_path

ROOT = Path(__file__).resolve().parents[2]


def _texts() -> list[str]:
    words = (ROOT / "samples" / "001-the-prodigal-son.md").read_text().split()
    return [
        " ".join(words[:150]),  # a chunk
        " ".join((words * 3)[:600]),  # past the model's 256 tokens: truncated alike
        "Why was it undignified for the father to run?",
        "",
    ]


def test_the_onnx_backend_gives_torchs_vectors() -> None:
    pytest.importorskip("onnxruntime")
    texts = _texts()
    torch_vectors = load_embedder("all-MiniLM-L6-v2").embed(texts, batch_size=2)

    onnx = Embedder("all-MiniLM-L6-v2", backend="onnx")

    assert onnx.backend == "onnx"
    assert onnx.dimension == 384
    onnx_vectors = onnx.embed(texts, batch_size=2)
    assert onnx_vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)
    assert np.sum(torch_vectors * onnx_vectors, axis=1).min() >= 0.9999


def test_a_model_with_a_dense_projection_exports_whole(tmp_path: Path) -> None:
    # The shape of model a reindex may switch to: another dimension, an extra layer.
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    base = Transformer(str(resolve_model_path("all-MiniLM-L6-v2")), max_seq_length=256)
    projected = SentenceTransformer(
        modules=[base, Pooling(384, "mean"), Dense(384, 128)], device="cpu"
    )
    projected.save(str(tmp_path / "model"))
    texts = _texts()

    torch_vectors = Embedder(str(tmp_path / "model")).embed(texts)
    onnx = Embedder(str(tmp_path / "model"), backend="onnx")

    assert onnx.dimension == 128
    assert np.sum(torch_vectors * onnx.embed(texts), axis=1).min() >= 0.9999


def test_onnx_without_onnxruntime_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an absent package looks like
    with pytest.raises(ConfigurationError, match=r"scribes\[onnx\].*SCRIBES_EMBEDDING_BACKEND"):
        Embedder("all-MiniLM-L6-v2", backend="onnx")


def test_the_backend_is_a_setting_and_torch_the_default() -> None:
    assert Settings().embedding_backend == "torch"
    assert Settings(SCRIBES_EMBEDDING_BACKEND="onnx").embedding_backend == "onnx"
    with pytest.raises(ValueError, match="SCRIBES_EMBEDDING_BACKEND"):
        Settings(SCRIBES_EMBEDDING_BACKEND="tensorflow")
