"""The near-miss guard: two questions close in embedding space that must not share an answer.

Sentence embeddings place a question and its negation, another person, another number or
another book side by side: under all-MiniLM-L6-v2 the labelled near misses of
`samples/eval/paraphrases.jsonl` score 0.41-0.998 (median 0.90) against 0.14-0.996 (median
0.81) for true rewordings, and other encoders do the same (GPTCache #694: a question and its
negation at 0.83-0.9997 across nine encoders). So no similarity threshold alone is safe, and
a semantic hit must also pass this guard, which compares the words themselves. It refuses
when the two questions differ in:

- a negation ("not", "n't", "never", "without", "no", ...);
- a number (digits, "4:6", "3,000", "25th", and number words "two", "second", ...);
- a name: a capitalised word not at the start of the question, or a known document title,
  present in one and absent from the other, or the same names in another order ("What did
  Jonathan give to David?" against "What did David give to Jonathan?");
- the question word ("where" against "when", "how many" against "why");
- a swap of a few content words, each side keeping the rest ("hot water" against "cold
  water", "the seed on the path" against "on the rocks"): a reworded question changes many
  words, a near miss changes few. Misspellings are not swaps ("brohter" is "brother").

It is a guard for precision: it also refuses some true rewordings (a synonym swapped for one
word looks like a near miss), which then cost one model call, never a wrong answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["QuestionWords", "near_miss"]

_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*(?:[:.,][0-9]+)*", re.UNICODE)


def _words(text: str) -> list[str]:
    return text.split()


_NEGATIONS = frozenset(
    _words("not no never without nothing nobody none neither nor nowhere cannot")
)
_CARDINALS = _words("zero one two three four five six seven eight nine ten eleven twelve")
_ORDINALS = _words(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"
)
_NUMBER_VALUES = {
    **{word: str(value) for value, word in enumerate(_CARDINALS)},
    **{word: str(value) for value, word in enumerate(_ORDINALS)},
    "once": "1",
    "twice": "2",
}
_NUMBER_WORDS = frozenset(
    [
        *_NUMBER_VALUES,
        *_words(
            """thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty
            forty fifty sixty seventy eighty ninety hundred thousand million billion twentieth
            hundredth thrice half double triple"""
        ),
    ]
)
# "how many" and "how much" ask for a number; "how" alone for a manner.
_QUESTION_WORDS = frozenset(_words("who whom whose what which when where why how"))
# Words whose change does not change what is asked. Directions and quantities ("into",
# "out", "before", "after", "more", "less", "all") are NOT here: they change the meaning.
_STOPWORDS = frozenset(
    _words(
        """a an the and or but if then so as of to in on at by for from is are was were be
        been being am do does did done doing have has had having i me my we our us you your
        he him his she her it its they them their this that these those there here what
        which who whom whose when where why how can could would should shall will may might
        must about according say said says tell told talk talked ask asked mean means meant
        really just also ever even than"""
    )
)
# Words of opposite sense: a question with one side of a pair is not answered by one with
# the other ("into Jerusalem" against "out of Jerusalem", "came early" against "came late").
_OPPOSITES = tuple(
    (frozenset(_words(one)), frozenset(_words(other)))
    for one, other in (
        ("into enter entered entering", "out leave left leaving exit"),
        ("up", "down"),
        ("before", "after"),
        ("early earlier", "late later"),
        ("first", "last"),
        ("start started begin beginning began", "end ended finish finished"),
        ("young younger youngest", "old older oldest"),
        ("hot", "cold"),
        ("more most", "less least fewer fewest"),
        ("full", "empty"),
        ("win won", "lose lost"),
        ("open opened", "closed shut"),
        ("above", "below"),
    )
)
# Capitalised words that are not names: "I", and the titles before a name ("Pastor Ruth"
# and "ruth" name one person).
_HONORIFICS = frozenset(_words("mr mrs ms miss dr rev reverend pastor elder deacon prof"))
_NOT_NAMES = frozenset([*_words("i i'm i've i'd i'll"), *_HONORIFICS])


@dataclass(frozen=True, slots=True)
class QuestionWords:
    """What the guard compares of one question, read once."""

    tokens: tuple[str, ...]
    stems_in_order: tuple[str, ...]  # the tokens without plural or possessive endings
    negations: frozenset[str]
    numbers: frozenset[str]
    names: tuple[str, ...]  # in the order they appear
    titles: frozenset[str]
    question_word: str
    content: frozenset[str]

    @classmethod
    def of(cls, question: str, *, titles: Collection[str] = ()) -> QuestionWords:
        text = unicodedata.normalize("NFKC", question).replace("’", "'")
        raw = _TOKEN.findall(text)
        # A question in capitals (or none) says nothing of names by its case.
        cased = text != text.upper() and text != text.lower()
        tokens = tuple(token.casefold() for token in raw)
        negations = {
            t
            for index, t in enumerate(tokens)
            if (t in _NEGATIONS or t.endswith("n't"))
            # "... or not?" asks yes or no; it negates nothing
            and not (t == "not" and index > 0 and tokens[index - 1] == "or")
        }
        numbers = {_number(t) for t in tokens if _is_number(t)}
        names = tuple(
            _stem(token)
            for index, (token, original) in enumerate(zip(tokens, raw, strict=True))
            if cased and index > 0 and original[:1].isupper() and token not in _NOT_NAMES
        )
        folded = " ".join(tokens)
        mentioned = {
            title
            for title in (" ".join(_TOKEN.findall(t.casefold())) for t in titles)
            if title and f" {title} " in f" {folded} "
        }
        content = {
            stem
            for stem in (
                _stem(t)
                for t in tokens
                if t not in _NEGATIONS and not t.endswith("n't") and not _is_number(t)
            )
            if stem not in _STOPWORDS
            and stem not in _NOT_NAMES
            and len(stem) > 1
            and stem not in names
        }
        return cls(
            tokens=tokens,
            stems_in_order=tuple(_stem(t) for t in tokens),
            negations=frozenset(negations),
            numbers=frozenset(numbers),
            names=names,
            titles=frozenset(mentioned),
            question_word=_question_word(tokens),
            content=frozenset(content),
        )


def near_miss(asked: QuestionWords, cached: QuestionWords) -> str | None:
    """Why `cached`'s answer must not answer `asked`, or None when nothing tells them apart.

    Negations and numbers must match both ways. A name is a capitalised word of either
    question, so "margaret" in a lower-case question is the name "Margaret" of the other.
    A name in `asked` must be in `cached` (a question about someone in particular is not
    answered by one about anyone); a name only `cached` has counts as a content word.
    """
    if asked.negations != cached.negations:
        return "negation"
    if asked.titles != cached.titles:
        return "title"
    if asked.numbers != cached.numbers:
        return "number"
    if _opposed(asked.stems_in_order, cached.stems_in_order):
        return "opposite"
    names = set(asked.names) | set(cached.names)
    in_asked = _ordered(asked.stems_in_order, names)
    in_cached = _ordered(cached.stems_in_order, names)
    if set(in_asked) - set(in_cached):
        return "name"
    common = [n for n in in_asked if n in in_cached]
    if len(common) == 2 and common != [n for n in in_cached if n in in_asked]:
        # Two people trading places: "Jonathan gave to David", "David gave to Jonathan".
        return "name order"
    if _other_question(asked.question_word, cached.question_word):
        return "question word"
    only_asked = _unmatched(asked.content - names, cached.content - names)
    only_cached = _unmatched(cached.content - names, asked.content - names)
    only_cached |= set(in_cached) - set(in_asked)
    # A swap: each side has a word or two the other lacks, and they share the rest.
    if only_asked and only_cached and max(len(only_asked), len(only_cached)) <= 2:
        return "swapped words"
    # One asks (nearly) all the other does and more: a narrower question ("... talking like
    # an employee"), or a broader one, whose answer the narrower one's may not cover.
    if min(len(only_asked), len(only_cached)) <= 1 and (only_asked or only_cached):
        return "added words" if len(only_asked) > len(only_cached) else "dropped words"
    return None


def _opposed(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one question has a word of a pair of opposites and the other the other."""
    words_a, words_b = set(a), set(b)
    return any(
        (words_a & one and words_b & other and not words_a & other)
        or (words_a & other and words_b & one and not words_b & other)
        for one, other in _OPPOSITES
    )


def _ordered(stems: tuple[str, ...], names: set[str]) -> list[str]:
    """The distinct names among `stems`, in the order they come."""
    return list(dict.fromkeys(stem for stem in stems if stem in names))


def _other_question(a: str, b: str) -> bool:
    """Both ask, in different words, and neither is the open "what" ("what made" asks why,
    "what was the length" how long)."""
    return bool(a and b and a != b and "what" not in (a, b))


def _unmatched(words: frozenset[str], other: frozenset[str]) -> set[str]:
    return {word for word in words if not any(_same_word(word, o) for o in other)}


def _same_word(a: str, b: str) -> bool:
    """Equal, or a misspelling of each other: one edit (a swap of neighbours is one)."""
    if a == b:
        return True
    shorter = min(len(a), len(b))
    if shorter < 4 or a[0] != b[0]:
        return False
    return _edits(a, b, limit=1) is not None


def _edits(a: str, b: str, *, limit: int) -> int | None:
    """Optimal-string-alignment distance (a swap of neighbours is one edit), or None past
    `limit`."""
    if abs(len(a) - len(b)) > limit:
        return None
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        if min(row) > limit:
            return None
        previous2, previous = previous, row
    return previous[-1] if previous[-1] <= limit else None


def _stem(word: str) -> str:
    """Plural and possessive endings off, so that "sheep's" and "sheep" are one word."""
    for suffix in ("'s", "s'", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def _is_number(token: str) -> bool:
    """Digits anywhere ("4:6", "3,000", "25th", gate "c4"), or a number word."""
    return any(c.isdigit() for c in token) or token in _NUMBER_WORDS


_ORDINAL = re.compile(r"[0-9]+(st|nd|rd|th)")


def _number(token: str) -> str:
    """One spelling per number: "3,000" is "3000", "first" and "1st" are "1"."""
    token = token.replace(",", "")
    if token in _NUMBER_VALUES:
        return _NUMBER_VALUES[token]
    ordinal = _ORDINAL.fullmatch(token)
    return token[: ordinal.start(1)] if ordinal else token


def _question_word(tokens: tuple[str, ...]) -> str:
    for index, token in enumerate(tokens):
        if token in _QUESTION_WORDS:
            if token == "which":
                return "what"  # "which soil" asks what "what soil" asks
            if token == "how" and index + 1 < len(tokens) and tokens[index + 1] in ("many", "much"):
                return "how " + tokens[index + 1]
            return token
    return ""
