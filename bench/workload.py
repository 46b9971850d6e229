"""A replayed workload over the sample notes, deterministic from a seed, every question
labelled with its meaning so that any two can be judged the same question or not.

Questions come from `samples/eval/`: `questions.jsonl` (answerable and unanswerable) and
`paraphrases.jsonl` (pairs that ask the same thing, and near misses that must not share an
answer). Strings whose normalised form (`normalise_question`, what the exact cache keys on)
is equal, and the two sides of a `same: true` pair, share a group; the two sides of a near
miss never do. Topics (the sample notes) are drawn Zipf-like, so a few are hot, and the
notes are edited and deleted on the way.
"""

from __future__ import annotations

import bisect
import json
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias, get_args

from bench.notes import SAMPLES_DIR, BenchNote, bench_notes
from rag.caches.answers import normalise_question

__all__ = [
    "EVAL_DIR",
    "KIND_SHARES",
    "MIN_GAP",
    "NoteChange",
    "QuestionKind",
    "Step",
    "Workload",
    "WorkloadQuestion",
    "build_workload",
]

EVAL_DIR = SAMPLES_DIR / "eval"

QuestionKind = Literal["first", "repeat", "recased", "paraphrase", "near_miss", "unanswerable"]
# Of the questions asked; a kind with nothing eligible at its turn gives way to another.
KIND_SHARES: Mapping[QuestionKind, float] = {
    "first": 0.22,  # a meaning's first question
    "repeat": 0.40,  # the very string asked before
    "recased": 0.17,  # asked before, with case and punctuation changed
    "paraphrase": 0.11,  # the other side of a `same: true` pair asked before
    "near_miss": 0.07,  # the other side of a near miss asked before: must not share an answer
    "unanswerable": 0.03,  # nothing in the notes answers it
}
# A question that reuses an earlier string comes at least this many steps after it, so that
# with 8 clients replaying in order the earlier answer has usually finished (and is cached).
MIN_GAP = 24
ZIPF_S = 1.0
# Lines of a note an edit rewrites: few, so that passages elsewhere in the note stay the same.
LINES_PER_EDIT = 3
_EDIT_SENTENCES = (
    "Later note: I had this part slightly wrong and fixed it after listening to the recording.",
    "Added a week later: the small group pushed back on this, and I think they were right.",
    "Correction: this came from the second service, not the first one.",
    "Edit: come back to this before the next series starts.",
    "Update: the pastor mentioned this again the following Sunday with a different example.",
)


@dataclass(frozen=True, slots=True)
class WorkloadQuestion:
    text: str
    group: str  # the meaning label: same group, same question
    kind: QuestionKind
    topic: str | None  # the note it is about; None when no note answers it
    # A near miss: the question asked earlier that it must not share an answer with.
    near_miss_of: str | None = None


@dataclass(frozen=True, slots=True)
class NoteChange:
    """A note edited (its whole new text, sent again through the documents API) or deleted."""

    document_id: str
    title: str
    text: str | None  # None: deleted

    @property
    def kind(self) -> Literal["edit", "delete"]:
        return "delete" if self.text is None else "edit"


Step: TypeAlias = WorkloadQuestion | NoteChange


@dataclass(frozen=True)
class Workload:
    seed: int
    notes: tuple[BenchNote, ...]  # as they are before the first step
    steps: tuple[Step, ...]
    labels: Mapping[str, str]  # normalised question -> group

    @property
    def questions(self) -> list[WorkloadQuestion]:
        return [step for step in self.steps if isinstance(step, WorkloadQuestion)]

    @property
    def changes(self) -> list[NoteChange]:
        return [step for step in self.steps if isinstance(step, NoteChange)]

    def group_of(self, question: str) -> str | None:
        """The meaning label of any question string the workload asks; None for others."""
        return self.labels.get(normalise_question(question))

    def kinds(self) -> Counter[str]:
        return Counter(q.kind for q in self.questions)


@dataclass
class _Group:
    name: str
    topic: str | None
    strings: list[str] = field(default_factory=list)  # distinct normalised forms, first raw text
    unanswerable: bool = False


class _Labels:
    """Union-find over normalised strings; each component is one meaning."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.names: dict[str, str] = {}  # root -> the first source name that declared it
        self.raw: dict[str, str] = {}  # normalised -> the first raw text seen
        self.topic: dict[str, str | None] = {}
        self.order: dict[str, int] = {}

    def add(self, text: str, name: str, topic: str | None) -> str:
        key = normalise_question(text)
        if key not in self.parent:
            self.parent[key] = key
            self.names[key] = name
            self.raw[key] = text
            self.topic[key] = topic
            self.order[key] = len(self.order)
        return key

    def root(self, key: str) -> str:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            # The earlier-declared root names the group, whichever side it came from.
            first, second = sorted((ra, rb), key=self.order.__getitem__)
            self.parent[second] = first


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass
class _Sources:
    groups: dict[str, _Group]
    group_of: dict[str, str]  # normalised -> group name
    near_misses: list[tuple[str, str]]  # (a, b) raw texts
    reserved: set[str]  # groups first asked only as a near miss


def _load_sources(eval_dir: Path) -> _Sources:
    labels = _Labels()
    near: list[tuple[str, str, str, str]] = []  # (a key, b key, a raw, b raw)
    unanswerable: set[str] = set()
    for number, row in enumerate(_read_jsonl(eval_dir / "questions.jsonl"), start=1):
        text = str(row["question"])
        if row.get("unanswerable"):
            unanswerable.add(labels.add(text, f"u{number:03d}", None))
        else:
            expected = row["expected"]
            assert isinstance(expected, list)
            labels.add(text, f"q{number:03d}", str(expected[0]))
    for number, row in enumerate(_read_jsonl(eval_dir / "paraphrases.jsonl"), start=1):
        a_raw, b_raw, topic = str(row["a"]), str(row["b"]), str(row["document"])
        if row["same"]:
            a = labels.add(a_raw, f"p{number:03d}", topic)
            labels.union(a, labels.add(b_raw, f"p{number:03d}", topic))
        else:
            a = labels.add(a_raw, f"n{number:03d}a", topic)
            b = labels.add(b_raw, f"n{number:03d}b", str(row.get("document_b", topic)))
            near.append((a, b, a_raw, b_raw))
    groups: dict[str, _Group] = {}
    group_of: dict[str, str] = {}
    for key in labels.parent:
        root = labels.root(key)
        name = labels.names[root]
        group = groups.setdefault(name, _Group(name, labels.topic[root]))
        group.strings.append(labels.raw[key])
        group.unanswerable = group.unanswerable or key in unanswerable
        group_of[key] = name
    for a, b, _, _ in near:
        if group_of[a] == group_of[b]:
            raise ValueError(f"near miss {labels.raw[a]!r} / {labels.raw[b]!r} share a meaning")
    for group in groups.values():
        if group.unanswerable and len(group.strings) > 1:
            raise ValueError(f"unanswerable question {group.strings[0]!r} has paraphrases")
    return _Sources(
        groups=groups,
        group_of=group_of,
        near_misses=[(a_raw, b_raw) for _, _, a_raw, b_raw in near],
        reserved={group_of[b] for _, b, _, _ in near},
    )


def _recase(text: str, rng: random.Random) -> list[str]:
    """Variants of `text` with its case and punctuation changed, in a seeded order."""
    bare = text.rstrip("?!. ")
    variants = [
        bare.lower(),
        text.lower(),
        text.upper(),
        bare + "??",
        bare + "?!",
        text.capitalize() if text[:1].islower() else text[:1].lower() + text[1:],
        "  " + text.replace(" ", "  ") + " ",
        text.replace(",", "").replace("'", "").replace("’", ""),  # the exact cache misses this
        bare.lower().replace(",", "") + " ?",
    ]
    rng.shuffle(variants)
    return [v for v in variants if v != text]


def _edited(text: str, number: int, rng: random.Random) -> str:
    """The note with a few of its longer lines rewritten: each keeps its first half and ends
    in a new sentence, so that text goes as well as comes, as when a note is corrected."""
    lines = text.split("\n")
    candidates = [
        i
        for i, line in enumerate(lines)
        if len(line.split()) >= 8 and not line.lstrip().startswith("#")
    ]
    for index in rng.sample(candidates, min(LINES_PER_EDIT, len(candidates))):
        words = lines[index].split(" ")
        sentence = _EDIT_SENTENCES[(number + index) % len(_EDIT_SENTENCES)]
        lines[index] = " ".join([*words[: len(words) // 2], sentence])
    return "\n".join(lines)


class _Planner:
    """Draws the questions one step at a time, tracking what has been asked and when."""

    def __init__(self, sources: _Sources, topics: Sequence[str], rng: random.Random) -> None:
        self.groups = sources.groups
        self.near_misses = sources.near_misses
        self.labels = dict(sources.group_of)  # normalised -> group; recased variants join it
        self.rng = rng
        ranked = list(topics)
        rng.shuffle(ranked)
        self.weight = {topic: 1 / (rank + 1) ** ZIPF_S for rank, topic in enumerate(ranked)}
        self.asked: dict[str, tuple[int, str]] = {}  # normalised -> (first step, raw text)
        self.order: list[tuple[int, str]] = []  # (first step, raw text) of each normalised form
        self.normalised: dict[str, str] = {}  # raw -> normalised, as normalising is not cheap
        self.asked_groups: set[str] = set()
        self.asks: Counter[str] = Counter()  # group -> times asked
        self.fresh = sorted(
            g.name
            for g in self.groups.values()
            if not g.unanswerable and g.name not in sources.reserved
        )
        self.unanswerable = sorted(g.strings[0] for g in self.groups.values() if g.unanswerable)
        self.originals = {text for group in self.groups.values() for text in group.strings}

    def pick(self, options: Sequence[tuple[str | None, str]], *, popular: bool = False) -> str:
        """One of `options` (topic, value): a topic by its Zipf weight, then a value in it;
        `popular`: a value (a question asked before) by how often its meaning was asked, so
        that popularity within a topic is heavy-tailed too, as when people ask again what
        they and others asked most."""
        by_topic: dict[str | None, list[str]] = defaultdict(list)
        for topic, value in options:
            by_topic[topic].append(value)
        topics = sorted(by_topic, key=str)
        topic = self.rng.choices(topics, [self.weight.get(t or "", 1e-3) for t in topics])[0]
        values = by_topic[topic]
        if not popular:
            return self.rng.choice(values)
        return self.rng.choices(values, [self.asks[self._group(v).name] for v in values])[0]

    def _key(self, text: str) -> str:
        key = self.normalised.get(text)
        if key is None:
            key = self.normalised[text] = normalise_question(text)
        return key

    def _group(self, text: str) -> _Group:
        return self.groups[self.labels[self._key(text)]]

    def _old(self, step: int) -> list[str]:
        """Raw texts first asked at least MIN_GAP steps before `step`, in order asked."""
        end = bisect.bisect_right(self.order, step - MIN_GAP, key=lambda entry: entry[0])
        return [text for _, text in self.order[:end]]

    def draw(self, kind: QuestionKind, step: int) -> WorkloadQuestion | None:
        if kind == "first":
            fresh = [g for g in self.fresh if g not in self.asked_groups]
            if not fresh:
                return None
            name = self.pick([(self.groups[g].topic, g) for g in fresh])
            return self._ask(self.groups[name].strings[0], kind, step)
        if kind in ("repeat", "recased"):
            old = [t for t in self._old(step) if not self._group(t).unanswerable]
            if not old:
                return None
            if kind == "recased":
                old = [t for t in old if t in self.originals]  # never a variant's variant
            text = self.pick([(self._group(t).topic, t) for t in old], popular=True)
            if kind == "repeat":
                return self._ask(text, kind, step)
            group = self._group(text)
            for variant in _recase(text, self.rng):
                if variant not in self.originals and (
                    self.labels.get(self._key(variant), group.name) == group.name
                ):
                    return self._ask(variant, kind, step, group=group)
            return None
        if kind == "paraphrase":
            options = [
                (group.topic, other)
                for text in self._old(step)
                for group in (self._group(text),)
                for other in group.strings
                if self._key(other) not in self.asked
            ]
            return self._ask(self.pick(options), kind, step) if options else None
        if kind == "near_miss":
            partners = {self._key(text) for text in self._old(step)}
            options = [
                (self._group(b).topic, f"{a}\x1f{b}")
                for a, b in self.near_misses
                if self._key(a) in partners and self._group(b).name not in self.asked_groups
            ]
            if not options:
                return None
            a, _, b = self.pick(options).partition("\x1f")
            return self._ask(b, kind, step, near_miss_of=a)
        return self._ask(self.rng.choice(self.unanswerable), "unanswerable", step)

    def _ask(
        self,
        text: str,
        kind: QuestionKind,
        step: int,
        *,
        group: _Group | None = None,
        near_miss_of: str | None = None,
    ) -> WorkloadQuestion:
        group = group or self._group(text)
        key = self._key(text)
        self.labels[key] = group.name
        if key not in self.asked:
            self.asked[key] = (step, text)
            self.order.append((step, text))
        self.asked_groups.add(group.name)
        self.asks[group.name] += 1
        return WorkloadQuestion(text, group.name, kind, group.topic, near_miss_of)


def build_workload(
    *,
    seed: int = 0,
    questions: int = 2000,
    edits: int = 12,
    deletes: int = 3,
    eval_dir: Path = EVAL_DIR,
) -> Workload:
    """`questions` questions over the sample notes and `edits + deletes` note changes spread
    evenly among them; the same arguments give the same workload."""
    rng = random.Random(seed)
    notes = tuple(bench_notes(0))
    sources = _load_sources(eval_dir)
    planner = _Planner(sources, [note.id for note in notes], rng)
    kinds: tuple[QuestionKind, ...] = get_args(QuestionKind)
    shares = [KIND_SHARES[kind] for kind in kinds]
    changes = edits + deletes
    change_at = {round((n + 1) * questions / (changes + 1)) for n in range(changes)}
    # Deletes fall in the second half, so that every note is asked about for a while first.
    delete_at = set(rng.sample(sorted(change_at)[changes // 2 :], deletes))
    texts = {note.id: note.text for note in notes}
    titles = {note.id: note.title for note in notes}
    steps: list[Step] = []
    asked = 0
    while asked < questions:
        if asked in change_at:
            change_at.discard(asked)
            document = planner.pick([(d, d) for d, text in texts.items()])
            if asked in delete_at:
                del texts[document]
                steps.append(NoteChange(document, titles[document], None))
            else:
                texts[document] = _edited(texts[document], len(steps), rng)
                steps.append(NoteChange(document, titles[document], texts[document]))
        kind = rng.choices(kinds, shares)[0]
        question = planner.draw(kind, asked)
        for fallback in ("first", "repeat"):
            if question is None:
                question = planner.draw(fallback, asked)
        if question is None:
            raise ValueError(f"nothing left to ask at question {asked}")
        steps.append(question)
        asked += 1
    return Workload(seed=seed, notes=notes, steps=tuple(steps), labels=planner.labels)
