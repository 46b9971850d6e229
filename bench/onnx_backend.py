"""`python -m bench.onnx_backend`: the embedding model on torch against ONNX Runtime.

What `SCRIBES_EMBEDDING_BACKEND` chooses between, measured the way `Embedder.embed` calls the
model: chunks of about 150 words from the sample notes (batch 64, what the index pool sends),
questions from `samples/eval/questions.jsonl` one at a time (an idle embed pool) and 32 at a
time (a busy one), each at 1 and 2 threads. Backends, where their packages are installed:

- `torch`: `SentenceTransformer`, the default;
- `onnx`: `rag.onnx_model`, the whole model exported by torch and run by onnxruntime;
- `onnx-int8`: the same graph with int8 weights (onnxruntime's dynamic quantisation);
- `st-onnx`: sentence-transformers' own `backend="onnx"` (needs optimum-onnx, which holds
  sentence-transformers below 6; see README).

Agreement is the cosine of each backend's vector with torch's for the same text, including
texts past the model's 256 tokens. Rounds alternate the backends so that a burst of outside
load falls on all of them; each rate is the best round. No cluster, no Redis. Runs in any
venv holding torch, sentence-transformers, onnxruntime and this repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.machine import cpu_share, wait_until_quiet
from bench.report import print_table
from bench.stats import format_ratio, ratio, summarise
from rag.tokens import resolve_model_path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
CHUNK_WORDS = 150
LONG_WORDS = 400  # past the model's 256 tokens: truncation must agree too
CHUNK_BATCH = 64  # SCRIBES_EMBEDDING_BATCH_SIZE's default
QUESTION_BATCH = 32  # SCRIBES_QUERY_BATCH_SIZE's default
# The bar for making a backend the default.
MIN_SPEEDUP = 1.5
MIN_COSINE = 0.99

Vectors = npt.NDArray[np.float32]
Encode = Callable[[Sequence[str], int], Vectors]


@dataclass
class Candidate:
    name: str
    threads: int
    encode: Encode
    load_s: float  # loading and, for ONNX, exporting
    chunk_rates: list[float] = field(default_factory=list)
    question_rates: list[float] = field(default_factory=list)
    single_ms: list[float] = field(default_factory=list)
    min_cosine: float = float("nan")


def _texts(chunks: int, questions: int) -> tuple[list[str], list[str], list[str]]:
    words = " ".join(p.read_text() for p in sorted((ROOT / "samples").glob("*.md"))).split()
    windows = [
        " ".join(words[i : i + CHUNK_WORDS])
        for i in range(0, len(words) - CHUNK_WORDS, CHUNK_WORDS)
    ]
    long_texts = [" ".join(words[i : i + LONG_WORDS]) for i in range(0, 4 * LONG_WORDS, LONG_WORDS)]
    lines = (ROOT / "samples" / "eval" / "questions.jsonl").read_text().splitlines()
    asked = [str(json.loads(line)["question"]) for line in lines if line.strip()]
    return windows[:chunks], long_texts, asked[:questions]


def _torch_candidates(model_dir: Path, threads: Sequence[int]) -> tuple[Any, list[Candidate]]:
    import torch
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(str(model_dir), device="cpu")
    load_s = time.perf_counter() - started

    def encoder(count: int) -> Encode:
        def encode(texts: Sequence[str], batch_size: int) -> Vectors:
            torch.set_num_threads(count)
            return np.asarray(
                model.encode(
                    list(texts),
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                ),
                dtype=np.float32,
            )

        return encode

    return model, [Candidate("torch", n, encoder(n), load_s) for n in threads]


def _onnx_candidates(model: Any, model_dir: Path, threads: Sequence[int]) -> list[Candidate]:
    if importlib.util.find_spec("onnxruntime") is None:
        print("  onnxruntime is not installed: no onnx figures (pip install 'scribes[onnx]')")
        return []
    from rag.onnx_model import OnnxSentenceModel, export_sentence_graph

    candidates = []
    for name, quantize in (("onnx", False), ("onnx-int8", True)):
        graph = export_sentence_graph(model, quantize=quantize)
        for count in threads:
            session = OnnxSentenceModel(graph, model_dir, threads=count)
            candidates.append(Candidate(name, count, _onnx_encode(session), graph.export_s))
    return candidates


def _onnx_encode(model: Any) -> Encode:
    def encode(texts: Sequence[str], batch_size: int) -> Vectors:
        return np.asarray(
            model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True),
            dtype=np.float32,
        )

    return encode


def _st_onnx_candidates(model_dir: Path, threads: Sequence[int]) -> list[Candidate]:
    if (
        importlib.util.find_spec("optimum") is None
        or importlib.util.find_spec("onnxruntime") is None
    ):
        print("  optimum-onnx is not installed: no st-onnx figures")
        return []
    import onnxruntime
    from sentence_transformers import SentenceTransformer

    candidates = []
    for count in threads:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = count
        options.inter_op_num_threads = 1
        started = time.perf_counter()
        model = SentenceTransformer(
            str(model_dir),
            device="cpu",
            backend="onnx",
            model_kwargs={"provider": "CPUExecutionProvider", "session_options": options},
        )
        load_s = time.perf_counter() - started
        candidates.append(Candidate("st-onnx", count, _onnx_encode(model), load_s))
    return candidates


def _measure_round(candidate: Candidate, chunks: Sequence[str], questions: Sequence[str]) -> None:
    candidate.encode(chunks[:4], CHUNK_BATCH)  # warm: first calls allocate
    started = time.perf_counter()
    candidate.encode(chunks, CHUNK_BATCH)
    candidate.chunk_rates.append(len(chunks) / (time.perf_counter() - started))
    started = time.perf_counter()
    candidate.encode(questions, QUESTION_BATCH)
    candidate.question_rates.append(len(questions) / (time.perf_counter() - started))
    for question in questions:
        started = time.perf_counter()
        candidate.encode([question], 1)
        candidate.single_ms.append((time.perf_counter() - started) * 1000)


def _versions() -> str:
    names = ["torch", "sentence-transformers", "transformers", "onnxruntime", "optimum-onnx"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def run(*, chunks: int, questions: int, rounds: int, threads: Sequence[int]) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = resolve_model_path("all-MiniLM-L6-v2")
    chunk_texts, long_texts, question_texts = _texts(chunks, questions)
    print(f"  {_versions()}; {os.cpu_count()} cores")
    model, candidates = _torch_candidates(model_dir, threads)
    candidates += _onnx_candidates(model, model_dir, threads)
    candidates += _st_onnx_candidates(model_dir, threads)

    agreement_texts = [*chunk_texts, *long_texts, *question_texts]
    truth = candidates[0].encode(agreement_texts, CHUNK_BATCH)
    for candidate in candidates:
        vectors = candidate.encode(agreement_texts, CHUNK_BATCH)
        candidate.min_cosine = float(np.min(np.sum(truth * vectors, axis=1)))
    for number in range(rounds):
        # Alternate the order too, so that no backend always follows the same one.
        for candidate in candidates if number % 2 == 0 else reversed(candidates):
            _measure_round(candidate, chunk_texts, question_texts)
    return _report(candidates, chunks=len(chunk_texts), questions=len(question_texts))


def _report(candidates: Sequence[Candidate], *, chunks: int, questions: int) -> dict[str, Any]:
    torch_rate = {c.threads: max(c.chunk_rates) for c in candidates if c.name == "torch"}
    print(
        f"\n== embedding backends: {chunks} chunks of {CHUNK_WORDS} words (batch {CHUNK_BATCH}), "
        f"{questions} questions (one at a time, and batch {QUESTION_BATCH}) =="
    )
    rows = []
    figures: dict[str, Any] = {}
    for c in candidates:
        best = max(c.chunk_rates)
        single = summarise(c.single_ms)
        speedup = ratio(best, torch_rate[c.threads])
        rows.append(
            [
                c.name,
                str(c.threads),
                f"{best:.1f}",
                format_ratio(speedup),
                f"{single.p50:.1f}",
                f"{max(c.question_rates):.0f}",
                f"{c.min_cosine:.7f}",
                f"{c.load_s:.1f}",
            ]
        )
        figures[f"{c.name}/{c.threads}"] = {
            "chunks_per_s": round(best, 2),
            "chunk_speedup_vs_torch": round(speedup, 3),
            "question_p50_ms": round(single.p50, 2),
            "questions_per_s_batched": round(max(c.question_rates), 1),
            "min_cosine_vs_torch": c.min_cosine,
            "load_s": round(c.load_s, 2),
        }
    print_table(
        [
            "backend",
            "threads",
            "chunks/s",
            "vs torch",
            "question p50 ms",
            "questions/s",
            "min cosine",
            "export/load s",
        ],
        rows,
    )
    for c in candidates:
        if c.name == "torch":
            continue
        speedup = ratio(max(c.chunk_rates), torch_rate[c.threads])
        meets = speedup >= MIN_SPEEDUP and c.min_cosine >= MIN_COSINE
        print(
            f"  {c.name} at {c.threads} thread(s): {format_ratio(speedup)} torch's chunks/s, "
            f"cosine >= {c.min_cosine:.4f}: {'meets' if meets else 'misses'} the bar "
            f"({MIN_SPEEDUP}x and {MIN_COSINE})"
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.onnx_backend",
        description="The embedding model on torch against ONNX Runtime (fp32 and int8, and "
        "sentence-transformers' own onnx backend where optimum-onnx is installed): chunks/s, "
        "question latency, agreement of the vectors. About 2 minutes on 2 cores.",
    )
    parser.add_argument("--chunks", type=int, default=64, help="150-word chunks; default 64")
    parser.add_argument("--questions", type=int, default=64, help="default 64")
    parser.add_argument("--rounds", type=int, default=3, help="best of; default 3")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="default 1 2")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to go idle",
    )
    args = parser.parse_args(argv)
    if args.wait_quiet > 0:
        quiet = wait_until_quiet(args.wait_quiet)
        print(f"  other processes use {quiet.others_share:.0%} of the machine; starting")
    with cpu_share() as share:
        figures = run(
            chunks=args.chunks, questions=args.questions, rounds=args.rounds, threads=args.threads
        )
    print(share.describe())
    if args.json:
        figures["machine"] = share.as_dict()
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
