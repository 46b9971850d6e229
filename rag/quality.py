"""How well one answer is grounded: what retrieval found and how much of it the answer cites.

Every finished answer carries a `Quality`, stored with it in the job record and the answer
cache, shown on the job, and observed in Prometheus for answers computed now. The figures
are measured on the answer as the user sees it, after post-processing:

- `top_score` and `mean_score`: cosine similarity of the best passage and the mean over the
  passages retrieved; None when there were none (a no-context answer).
- `passages_used`: the passages retrieved above the threshold and handed to the writer (the
  Anthropic writer may fit fewer of them into its prompt budget).
- `passages_cited`: distinct passages the answer cites with a valid [n].
- `all_sentences_cited`: the answer cites a passage and every sentence that states
  something cites one. A sentence is one of `rag.writers.postprocess.answer_sentences`; an
  uncited lead-in ending in ":" ("From your notes:") states nothing and is exempt, and so is
  a bullet with no words. A short answer is held to the same rule: "Yes [1]." passes, a
  bare "Yes." fails. An answer that cites nothing is never "every sentence cited", and
  neither is a no-context answer, which cites nothing by design (it is counted apart from
  uncited answers).
- `retrieved_documents`: the document id of each retrieved passage, best first, so that
  retrieval can be judged apart from what the writer chose to cite (`scribes eval`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag.types import Passage

__all__ = ["NO_CONTEXT_QUALITY", "Quality", "measure_quality"]


@dataclass(frozen=True, slots=True)
class Quality:
    """The grounding figures of one answer; see the module's docstring for each one."""

    top_score: float | None
    mean_score: float | None
    passages_used: int
    passages_cited: int
    all_sentences_cited: bool
    retrieved_documents: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "top_score": self.top_score,
            "mean_score": self.mean_score,
            "passages_used": self.passages_used,
            "passages_cited": self.passages_cited,
            "all_sentences_cited": self.all_sentences_cited,
            "retrieved_documents": list(self.retrieved_documents),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Quality:
        top = data.get("top_score")
        mean = data.get("mean_score")
        return cls(
            top_score=None if top is None else float(top),
            mean_score=None if mean is None else float(mean),
            passages_used=int(data.get("passages_used", 0)),
            passages_cited=int(data.get("passages_cited", 0)),
            all_sentences_cited=bool(data.get("all_sentences_cited")),
            retrieved_documents=tuple(str(d) for d in data.get("retrieved_documents", ())),
        )


NO_CONTEXT_QUALITY = Quality(
    top_score=None, mean_score=None, passages_used=0, passages_cited=0, all_sentences_cited=False
)


def measure_quality(passages: Sequence[Passage], text: str) -> Quality:
    """The quality of the finished answer `text`, written from `passages`."""
    # Imported on use: rag.types holds a Quality, and rag.writers imports rag.types.
    from rag.writers.postprocess import answer_sentences

    if not passages:
        return NO_CONTEXT_QUALITY
    ranked = sorted(passages, key=lambda p: p.number)
    numbers = {p.number for p in ranked}
    sentences = answer_sentences(text)
    cited = {n for sentence in sentences for n in sentence.cites if n in numbers}
    uncited = [
        s for s in sentences if _states_something(s.text) and not numbers.intersection(s.cites)
    ]
    scores = [p.score for p in ranked]
    return Quality(
        top_score=max(scores),
        mean_score=round(sum(scores) / len(scores), 4),
        passages_used=len(ranked),
        passages_cited=len(cited),
        all_sentences_cited=bool(cited) and not uncited,
        retrieved_documents=tuple(p.document_id for p in ranked),
    )


def _states_something(text: str) -> bool:
    """Not a lead-in ("From your notes:") and not a bare bullet or mark."""
    return not text.endswith(":") and any(ch.isalnum() for ch in text)
