"""The embedding model run by ONNX Runtime (`SCRIBES_EMBEDDING_BACKEND=onnx`).

sentence-transformers has `backend="onnx"`, but it goes through optimum-onnx, whose releases
(0.1.0 the newest) need transformers below 4.58, and so sentence-transformers below 6: it
would take the project back from 6.3 and 5.25. So the loaded `SentenceTransformer` is
exported here instead, whole (transformer, pooling, any dense layer, normalisation), with
torch's own ONNX exporter, each time a process loads the model (about 2.5 s; nothing is kept
on disk, so no stale graph can outlive a model change); onnxruntime runs it, fed by the
model's `tokenizer.json` through `tokenizers`, truncating where the model does.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from rag.settings import ConfigurationError

__all__ = ["OnnxSentenceModel", "SentenceGraph", "export_sentence_graph", "onnxruntime_module"]

Vectors = npt.NDArray[np.float32]

# The ops of a BERT-like encoder and its pooling are all in opset 17 (onnxruntime 1.16+).
_OPSET = 17
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT = "sentence_embedding"


def onnxruntime_module() -> Any:
    """onnxruntime, or a `ConfigurationError` that says how to get it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigurationError(
            "SCRIBES_EMBEDDING_BACKEND=onnx needs onnxruntime, which is not installed: "
            "pip install 'scribes[onnx]', or set SCRIBES_EMBEDDING_BACKEND=torch"
        ) from exc
    return onnxruntime


@dataclass(frozen=True, slots=True)
class SentenceGraph:
    """A sentence-transformers model exported to ONNX: the serialized graph and its inputs."""

    serialized: bytes
    input_names: tuple[str, ...]
    dimension: int
    max_seq_length: int
    export_s: float  # torch's export, and the quantisation when asked


def export_sentence_graph(model: Any, *, quantize: bool = False) -> SentenceGraph:
    """`model` (a loaded `SentenceTransformer`) as one ONNX graph, from token ids to the
    sentence vector; `quantize`: weights as int8 (onnxruntime's dynamic quantisation), for
    bench/onnx_backend.py: its vectors miss the 0.99 cosine that a backend must keep."""
    onnxruntime_module()  # before the export's seconds, not after
    started = time.perf_counter()
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # 6.x renamed it
    sample = preprocess(["a sample sentence", "and another, longer sample sentence"])
    input_names = tuple(name for name in _INPUT_NAMES if name in sample)
    with tempfile.TemporaryDirectory(prefix="scribes-onnx-") as scratch:
        exported = Path(scratch) / "model.onnx"
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer warns about every Python branch on a shape; the graph is checked
            # against torch's vectors by the tests and bench/onnx_backend.py instead.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _TensorsToSentence(model, input_names).eval(),
                tuple(sample[name] for name in input_names),
                exported,
                input_names=list(input_names),
                output_names=[_OUTPUT],
                dynamic_axes={
                    **{name: {0: "batch", 1: "sequence"} for name in input_names},
                    _OUTPUT: {0: "batch"},
                },
                opset_version=_OPSET,
                dynamo=False,  # the dynamo exporter needs onnxscript, and is no faster to run
            )
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(scratch) / "model-int8.onnx"
            # Per channel: min cosine with torch 0.987 here, against 0.89 per tensor.
            quantize_dynamic(exported, quantized, weight_type=QuantType.QInt8, per_channel=True)
            exported = quantized
        serialized = exported.read_bytes()
    return SentenceGraph(
        serialized=serialized,
        input_names=input_names,
        dimension=int(model.get_embedding_dimension()),
        max_seq_length=int(model.max_seq_length),
        export_s=time.perf_counter() - started,
    )


class OnnxSentenceModel:
    """A `SentenceGraph` in an onnxruntime session, with the same `encode` and
    `get_embedding_dimension` as `SentenceTransformer`: what `Embedder` calls."""

    def __init__(self, graph: SentenceGraph, model_dir: Path, *, threads: int) -> None:
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Threads that spin while idle take the core from the other pools on a small machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            graph.serialized, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = _tokenizer(model_dir, max_length=graph.max_seq_length)
        self._input_names = graph.input_names
        self._dimension = graph.dimension
        self.export_s = graph.export_s

    @classmethod
    def export(
        cls, model: Any, model_dir: Path, *, threads: int, quantize: bool = False
    ) -> OnnxSentenceModel:
        """`model`, a loaded `SentenceTransformer` read from `model_dir`, run by onnxruntime."""
        return cls(export_sentence_graph(model, quantize=quantize), model_dir, threads=threads)

    def get_embedding_dimension(self) -> int:
        return self._dimension

    def encode(
        self,
        sentences: Sequence[str],
        *,
        batch_size: int = 32,
        convert_to_numpy: bool = True,
        normalize_embeddings: bool = False,
        show_progress_bar: bool = False,
    ) -> Vectors:
        """Float32 vectors, one row per sentence, as `SentenceTransformer.encode` gives them.

        Sorted by length before batching, as sentence-transformers does, so that a batch pads
        to a length near its own.
        """
        order = np.argsort([-len(sentence) for sentence in sentences], kind="stable")
        rows = np.zeros((len(sentences), self._dimension), dtype=np.float32)
        for start in range(0, len(sentences), batch_size):
            picked = order[start : start + batch_size]
            encodings = self._tokenizer.encode_batch([sentences[i] for i in picked])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            (vectors,) = self._session.run(
                [_OUTPUT], {name: feeds[name] for name in self._input_names}
            )
            rows[picked] = vectors
        if normalize_embeddings:
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            rows /= np.maximum(norms, 1e-12)
        return rows


def _tokenizer(model_dir: Path, *, max_length: int) -> Tokenizer:
    file = model_dir / "tokenizer.json"
    if not file.is_file():
        raise ConfigurationError(
            f"{model_dir} has no tokenizer.json, which SCRIBES_EMBEDDING_BACKEND=onnx reads; "
            "save the model with its fast tokenizer, or set SCRIBES_EMBEDDING_BACKEND=torch"
        )
    tokenizer = Tokenizer.from_file(str(file))
    # tokenizer.json ships with truncation at 128; the model reads up to max_seq_length.
    tokenizer.enable_truncation(max_length=max_length)
    padding = tokenizer.padding or {}
    tokenizer.enable_padding(
        pad_id=int(padding.get("pad_id", 0)), pad_token=str(padding.get("pad_token", "[PAD]"))
    )
    return tokenizer


class _TensorsToSentence(torch.nn.Module):
    """A `SentenceTransformer` as a function of its tensors, which is what ONNX exports."""

    def __init__(self, model: Any, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        embedding: torch.Tensor = self.model(features)[_OUTPUT]
        return embedding
