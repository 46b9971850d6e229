"""The vector store: one interface (`base`), two adapters, and the factory that picks one.

`open_vector_store(url=None, …)` gives the embedded Qdrant Edge shard (`rag.store.edge`);
a URL gives a Qdrant server, or qdrant-client's in-process mode for `:memory:` and `path:DIR`
(`rag.store.qdrant`).
"""

from __future__ import annotations

from pathlib import Path

from rag.store.base import QuestionIndex, VectorStore, VectorStoreError

__all__ = [
    "QuestionIndex",
    "VectorStore",
    "VectorStoreError",
    "open_question_index",
    "open_vector_store",
]


def open_vector_store(
    *, url: str | None, api_key: str | None, path: Path, collection: str, dimension: int
) -> VectorStore:
    """The Qdrant Edge shard at `path` when `url` is None, else qdrant-client on `url`.

    `url` is an http(s) URL of a Qdrant server, `:memory:`, or `path:DIR` for qdrant-client's
    in-process mode. `collection` names the qdrant-client collection; the Edge shard is one
    collection, stored at `path` itself.
    """
    # Imported here so that importing the interface loads neither engine.
    if url is None:
        from rag.store.edge import EdgeVectorStore

        return EdgeVectorStore(path=path, dimension=dimension)
    from rag.store.qdrant import QdrantVectorStore

    return QdrantVectorStore(url=url, api_key=api_key, collection=collection, dimension=dimension)


def open_question_index(
    *, url: str | None, api_key: str | None, path: Path, collection: str, dimension: int
) -> QuestionIndex:
    """The semantic cache's question index, in the same engine as the chunks: an Edge shard
    at `path`, or the qdrant-client collection `collection`."""
    if url is None:
        from rag.store.edge import EdgeQuestionIndex

        return EdgeQuestionIndex(path=path, dimension=dimension)
    from rag.store.qdrant import QdrantQuestionIndex

    return QdrantQuestionIndex(url=url, api_key=api_key, collection=collection, dimension=dimension)
