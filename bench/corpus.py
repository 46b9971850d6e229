"""Synthetic sermon notes for benchmarks, deterministic by seed, stdlib only.

Each note is drawn from its own generator seeded by `(seed, index)`, so the first N notes
of a larger corpus are the same N notes as a corpus of N, and any note can be rebuilt alone.
Notes are built from vocabulary lists (speakers, books, topics and their keywords, places,
stories) and sentence templates, so that their embeddings spread out the way real notes do.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

__all__ = [
    "SyntheticNote",
    "main",
    "synthetic_notes",
    "synthetic_questions",
    "write_corpus",
]

_FIRST_DATE = date(2015, 1, 4)  # a Sunday; notes fall on Sundays from here
_WEEKS = 11 * 52
_LAST_DATE = _FIRST_DATE + timedelta(weeks=_WEEKS - 1)

_TITLES = ("Pastor", "Pastor", "Rev.", "Rev. Dr.", "Elder", "Deacon", "Bishop", "Dr.", "")
_FIRST_NAMES = (
    "Ruth", "Daniel", "Samuel", "Margaret", "Priya", "Luis", "Marcus", "Helen", "Walter",
    "Everett", "Grace", "Tomás", "Agnes", "Caleb", "Hannah", "Yusuf", "Abigail", "Miriam",
    "Joseph", "Esther", "Isaac", "Lydia", "Nathan", "Deborah", "Elijah", "Naomi", "Peter",
    "Phoebe", "Simon", "Martha", "Andrew", "Julia", "Thomas", "Chloe", "Gideon", "Rosa",
    "Kwame", "Mei", "Olusegun", "Ingrid", "Mateo", "Anya", "Rahul", "Siobhan", "Hiroshi",
    "Fatima", "Emmanuel", "Clara", "Dmitri", "Beatriz", "Kofi", "Leah", "Victor", "Imani",
)  # fmt: skip
_LAST_NAMES = (
    "Okafor", "Whitfield", "Adeyemi", "Lindqvist", "Raman", "Moreno", "Bell", "Castellanos",
    "Brennan", "Sloane", "Nakamura", "Ribeiro", "Mwangi", "Hart", "Pruitt", "Haddad", "Torres",
    "Kowalski", "Mensah", "Park", "Nguyen", "Fischer", "Oyelaran", "Delgado", "Andersson",
    "Chen", "Ferreira", "Murphy", "Haile", "Santos", "Kimura", "Abernathy", "Osei", "Novak",
    "Ivanova", "Gallagher", "Banerjee", "Musa", "Rossi", "Yoon", "Alvarez", "Petrov", "Achieng",
    "Halvorsen", "Mbeki", "Laurent", "Quinn", "Takahashi", "Ramirez", "Eriksen",
)  # fmt: skip
_ROLES = (
    "guest", "youth pastor", "associate pastor", "pastor emeritus", "missionary to Peru",
    "missionary in Cambodia", "hospital chaplain", "seminary professor", "church planter",
    "worship leader", "children's pastor", "prison chaplain", "campus minister",
)  # fmt: skip
_CHURCHES = (
    "Cornerstone Community Church", "Grace Fellowship", "St. Andrew's Parish",
    "Riverside Baptist Church", "New Hope Church", "Harbor Light Church",
    "First Presbyterian, downtown", "Living Stones Chapel", "Trinity Methodist",
    "Eastside Vineyard", "Emmanuel Lutheran", "the women's retreat at Cedar Lodge",
    "the men's breakfast", "Wednesday night Bible study", "the youth winter camp",
    "the regional leaders' conference", "Shiloh AME", "Mount Olive Church",
)  # fmt: skip
_SERIES = (
    "Lost and Found", "Rhythms of Grace", "Joy in Chains", "Teach Us to Pray",
    "Waiting in the Dark", "Faith That Works", "Stories Jesus Told", "Hard Words of Jesus",
    "Minor Prophets, Major Questions", "The Upside-Down Kingdom", "Songs for the Night",
    "People of the Way", "Ordinary Saints", "Wilderness Roads", "The Long Obedience",
    "Home Again", "Bread for the Journey", "Living Water", "Unhurried", "The Open Table",
)  # fmt: skip
_BOOKS = (
    ("Genesis", 50), ("Exodus", 40), ("Leviticus", 27), ("Numbers", 36), ("Deuteronomy", 34),
    ("Joshua", 24), ("Judges", 21), ("Ruth", 4), ("1 Samuel", 31), ("2 Samuel", 24),
    ("1 Kings", 22), ("2 Kings", 25), ("Nehemiah", 13), ("Esther", 10), ("Job", 42),
    ("Psalms", 150), ("Proverbs", 31), ("Ecclesiastes", 12), ("Isaiah", 66),
    ("Jeremiah", 52), ("Lamentations", 5), ("Ezekiel", 48), ("Daniel", 12), ("Hosea", 14),
    ("Amos", 9), ("Jonah", 4), ("Micah", 7), ("Habakkuk", 3), ("Matthew", 28), ("Mark", 16),
    ("Luke", 24), ("John", 21), ("Acts", 28), ("Romans", 16), ("1 Corinthians", 16),
    ("2 Corinthians", 13), ("Galatians", 6), ("Ephesians", 6), ("Philippians", 4),
    ("Colossians", 4), ("1 Thessalonians", 5), ("Hebrews", 13), ("James", 5), ("1 Peter", 5),
    ("1 John", 5), ("Revelation", 22),
)  # fmt: skip
_BOOK_NAMES = tuple(name for name, _ in _BOOKS)
_TOPICS: Mapping[str, tuple[str, ...]] = {
    "forgiveness": ("mercy", "debt", "grudges", "pardon", "reconciliation", "apology"),
    "grief": ("lament", "loss", "tears", "mourning", "comfort", "memory"),
    "generosity": ("giving", "money", "the tithe", "abundance", "contentment", "treasure"),
    "anxiety": ("worry", "fear", "peace", "trust", "control", "sleepless nights"),
    "Sabbath rest": ("rest", "stopping", "delight", "hurry", "the seventh day", "limits"),
    "justice": ("the poor", "the widow", "fairness", "advocacy", "the oppressed", "the stranger"),
    "prayer": ("asking", "silence", "persistence", "intercession", "listening", "praise"),
    "hospitality": ("welcome", "the table", "strangers", "the open door", "meals", "guests"),
    "doubt": ("questions", "honesty", "belief", "uncertainty", "wrestling", "evidence"),
    "marriage": ("covenant", "faithfulness", "mutual submission", "patience", "conflict", "vows"),
    "work": ("vocation", "labor", "excellence", "calling", "the workplace", "craft"),
    "creation care": ("the garden", "stewardship", "soil", "the earth", "water", "creatures"),
    "Advent": ("waiting", "promise", "light", "darkness", "the coming king", "expectation"),
    "Christmas": ("incarnation", "the manger", "shepherds", "angels", "good news", "Emmanuel"),
    "Lent": ("repentance", "dust", "fasting", "the wilderness", "confession", "returning"),
    "Easter": ("resurrection", "the empty tomb", "new life", "witnesses", "morning", "victory"),
    "Pentecost": ("the Spirit", "fire", "wind", "languages", "boldness", "the gathered church"),
    "baptism": ("water", "new birth", "dying and rising", "identity", "cleansing", "belonging"),
    "communion": ("bread", "the cup", "remembrance", "the table", "the body", "thanksgiving"),
    "suffering": ("pain", "endurance", "the fiery trial", "perseverance", "the cross", "scars"),
    "parenting": ("children", "teaching", "example", "discipline", "blessing", "the home"),
    "friendship": ("loyalty", "companionship", "truth-telling", "presence", "encouragement"),
    "leadership": ("service", "humility", "vision", "authority", "the towel", "courage"),
    "identity": ("belovedness", "the image of God", "worth", "names", "adoption", "calling"),
    "hope": ("promise", "the future", "renewal", "the new creation", "endurance", "dawn"),
    "temptation": ("desire", "resistance", "the tempter", "self-control", "watchfulness"),
    "humility": ("pride", "the low place", "meekness", "teachability", "dependence"),
    "mission": ("sending", "the nations", "witness", "neighbors", "the harvest", "the road"),
    "faithfulness": ("steadfastness", "promises", "small things", "consistency", "loyalty"),
    "joy": ("gladness", "celebration", "delight", "gratitude", "feasting", "singing"),
    "wisdom": ("understanding", "the fear of the Lord", "counsel", "discernment", "folly"),
    "community": ("one another", "unity", "accountability", "diversity", "the church family"),
    "healing": ("wholeness", "the sick", "touch", "restoration", "the physician", "faith"),
}
_TOPIC_NAMES = tuple(_TOPICS)
_IMAGES = (
    "the wilderness", "the upper room", "a locked door", "the threshing floor", "the night shift",
    "the well at noon", "a borrowed boat", "the far country", "the valley", "the empty tomb",
    "the potter's house", "a burning bush", "the riverbank", "the city gate", "a fig tree",
    "the road to Emmaus", "the prison at midnight", "the kitchen table", "a hospital waiting room",
    "the parking lot after church", "the harvest field", "a storm at sea", "the mountain",
    "the market", "the sheepfold", "a small room with the door shut", "the edge of the field",
)  # fmt: skip
_PLACES = (
    "Lagos", "Nairobi", "Beira", "Beirut", "Manila", "Lima", "Phnom Penh", "Kyiv", "Spokane",
    "Tacoma", "Yakima", "Salinas", "Detroit", "Glasgow", "Porto", "Seoul", "Accra", "Oaxaca",
    "Bergen", "Kolkata", "Nyeri", "Ibadan", "Fresno", "Duluth", "Halifax", "Bogotá",
    "a farm outside Boise", "a fishing town in Maine", "the south end of town", "Portland",
)  # fmt: skip
_JOBS = (
    "nurse", "bus driver", "farmer", "teacher", "welder", "accountant", "fisherman", "baker",
    "electrician", "truck driver", "librarian", "social worker", "janitor", "surgeon",
    "dairy farmer", "retired machinist", "barista", "firefighter", "seamstress", "mail carrier",
)  # fmt: skip
_EVENTS = (
    "lost everything in a flood and rebuilt the neighbor's fence first",
    "kept an empty chair at the dinner table for twenty years",
    "drove four hours to return a stranger's wallet",
    "forgave the driver who hit her son",
    "planted an orchard he would never live to harvest",
    "ran a soup kitchen out of a two-car garage",
    "learned to read at seventy so she could read the Psalms herself",
    "gave away a year's savings and never told anyone",
    "sat with a dying neighbor every night for a month",
    "wrote an apology letter twenty-seven years too late",
    "stopped working on Sundays and almost lost the business",
    "took in three foster children in one weekend",
    "walked two hours each way to carry water for a widow",
    "prayed for the same brother every morning for eleven years",
    "washed the feet of the man who had cheated him",
    "kept the church lights on through a winter with no heating money",
    "turned down a promotion to stay near an aging mother",
    "sang hymns in a hospital hallway during a blackout",
)  # fmt: skip
_OBJECTS = (
    "a cracked teacup", "a pair of work boots", "an old tithe envelope", "a stuffed rabbit",
    "a set of car keys", "a loaf of bread", "a clay jar", "a garden trowel", "a worn-out Bible",
    "a wedding ring", "a candle stub", "a child's drawing", "a stethoscope", "a fishing net",
    "a house key", "a hospital bracelet", "a jar of seeds", "a hand-knitted scarf",
)  # fmt: skip
_PRACTICES = (
    "ten minutes of silence before breakfast", "a phone-free dinner", "a handwritten note",
    "a walk without headphones", "reading a psalm before bed", "a gratitude list",
    "a 24-hour Sabbath", "fasting from news", "praying the Lord's Prayer three times a day",
    "a breath prayer on the commute", "inviting a neighbor to dinner", "a weekly check-in",
    "journaling one question a day", "giving something away each week",
    "memorizing one verse", "serving one shift at the food pantry",
)  # fmt: skip
_AUDIENCES = (
    "exiles far from home", "farmers after a bad harvest", "a small church under pressure",
    "slaves and their masters in the same room", "refugees in a foreign city",
    "religious leaders who thought they had it figured out", "tired fishermen",
    "a congregation split over money", "widows with no one to speak for them",
)  # fmt: skip
_CONDITIONS = (
    "surgery next week", "job search", "chemotherapy", "new baby", "move across the country",
    "mother's dementia", "recovery from a stroke", "visa application", "first year of college",
    "marriage", "grief after a funeral", "long covid", "knee replacement", "adoption paperwork",
)  # fmt: skip
_DISASTERS = ("the flooding", "the wildfire", "the earthquake", "the plant closure", "the storm")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_HEADINGS: Mapping[str, tuple[str, ...]] = {
    "points": ("Main points", "Outline", "Notes", "The text", "Key ideas", "Big idea: {Kw}"),
    "illustration": ("Illustration", "Story", "Example"),
    "quote": ("Quotes", "Worth remembering"),
    "application": ("Application", "Takeaways", "This week", "Living it out"),
    "prayer": ("Prayer requests", "Pray for"),
    "questions": ("Questions to think about", "For small group", "Discussion questions"),
    "reflection": ("My notes", "Reflection", "Personal"),
}
_POINTS = (
    "In {ref} the word for {kw} points to something deeper than we usually mean.",
    "{speaker_short} said {topic} starts with noticing {kw}, not with fixing it.",
    "The context matters: {book} was first heard by {audience}.",
    "{Kw} and {kw2} belong together; you cannot have one without the other.",
    "Notice who is left out of the story, and then notice who God brings back in.",
    "The passage moves from {kw} to {kw2} in just a few verses.",
    "We tend to skip the hard verses about {kw}, but they are the point.",
    "Verse {verse} is the hinge of the whole chapter.",
    "Three words to remember: {kw}, {kw2}, and {kw3}.",
    "{Topic} is a daily practice, not a one-time event.",
    "The first listeners would have heard {kw} as something shocking.",
    "Compare {other_ref}, where the same theme of {kw} shows up.",
    "God meets people in {image}, not only in the temple.",
    "{speaker_short} asked what would change if we really believed this about {kw}.",
    "Something as ordinary as {kw} shapes everything else.",
    "Grace comes before the command here, not after it.",
    "The story ends without a resolution on purpose; we are meant to finish it.",
    "Jesus answers a question about {kw} with another question.",
    "{Topic} is not the absence of {kw}; it is God's presence in the middle of it.",
    "The command is plural: this is about the whole community, not just me.",
    "The original word carries {kw} and {kw2} together; English needs two words for it.",
    "Waiting is part of {topic}; most of the story happens in the waiting.",
    "We are not the hero of {ref}; God is.",
    "{Topic} in {image} looks different from {topic} on a Sunday morning.",
    "Our culture calls {kw} weakness; the text calls it strength.",
    "It is easier to talk about {kw} than to live it out on a {weekday}.",
    "The repetition of {kw} in chapter {chapter} is deliberate.",
    "The one who seems least qualified is the one God uses.",
    "{speaker_short}: the opposite of {topic} here is not {kw} but self-reliance.",
    "There are {small} different pictures of {kw} in this passage alone.",
    "{speaker_short} pointed out that {book} never explains {kw}; it just shows it.",
    "The setting is {image}, which tells you something before anyone speaks.",
    "Everyone in the story wants {kw}, but only one person asks for it.",
    "Notice who acts and who receives in verses {verse} and {verse2}.",
    "If you read {ref} slowly, {kw} is everywhere.",
    "{Topic} was the thread through the whole service, even the songs.",
    "{speaker_short} said the church in {place} taught them more about {kw} than any book.",
    "The text does not ask us to feel {kw}; it asks us to do it.",
    "God's {kw} shows up before anyone deserves it.",
    "There is {kw} that performs and {kw} that serves; only one lasts.",
    "Three movements in the passage: {kw}, then {kw2}, then {kw3}.",
    "The surprise of the passage is who gets the last word.",
    "The word translated {kw} also shows up in {other_ref}.",
    "{Kw} without {kw2} turns into something else entirely.",
    "People in {place} would recognize this story faster than we do.",
    "Ask of every verse: what does this show about God, and what does it ask of me?",
    "{speaker_short} drew a timeline on the whiteboard: {kw}, then {kw2}, then the promise.",
    "The small detail in verse {verse} changes how you read {kw}.",
    "Read this next to {other_ref}; they answer each other.",
    "This is good news for people worn out by {kw}, not advice for the strong.",
)
_SUBPOINTS = (
    "see also {other_ref}:{verse}",
    "{kw} here is a verb, not a noun",
    "this was radical in that culture",
    "same word shows up again in verse {verse}",
    '{speaker_short}: "we love to skip this part"',
    "connects to {kw2}",
    "not a rule, an invitation",
    "note the repetition",
    "{small} times in this chapter",
    "{kw} before the command",
    "compare {image}",
)
_ILLUSTRATIONS = (
    "{speaker_short} told a story about {person} from {place}, who {event}.",
    "Story about {person}, {a_job} in {place}, who {event}. The point: {kw} shows up in "
    "ordinary places.",
    "In {year} {speaker_short} met {a_job} in {place} who {event}, and said it taught "
    "more about {topic} than seminary did.",
    "{speaker_short} held up {object} and said it was the best picture of {kw} they owned.",
    "Illustration: {person}, {a_job}, {event}. Nobody would have known.",
    "{speaker_short} remembered {image} in {place} back in {year} and how {kw} looked there.",
    "{speaker_short} described {a_job} in {place} who kept {object} on the dashboard for "
    "{small} years as a reminder of {kw}.",
    "{speaker_short} read a letter from {person} in {place} about {kw} and had to stop "
    "halfway through.",
    "Childhood story from {place}: {object}, and what it taught {speaker_short} about {kw}.",
)
_QUOTES = (
    '"{Kw} is not a destination; it is a direction."',
    '"God does not waste {kw}."',
    '"You cannot receive {kw} with clenched fists."',
    '"If {topic} does not change your {weekday}, it has not changed you."',
    '"The opposite of {kw} is not {kw2}. It is hurry."',
    '"We want {kw} without {kw2}. God offers both."',
    '"Small acts of {kw} are never small to God."',
    '"{Topic} is what faith looks like with its shoes on."',
    '"God sets the table before the trouble leaves."',
    '"You will never finish. {Kw} is the practice of trusting anyway."',
    '"Before God gives a plan, God gives a burden about {kw}."',
)
_APPLICATIONS = (
    "Try {practice} this week.",
    "Pray for one person about {kw} every {weekday}.",
    "Write down one place where {kw} is missing in my life.",
    "Talk to {person} about {kw2}.",
    "Read {other_ref} before next Sunday.",
    "Try {practice} for {small} days and tell the small group how it went.",
    "Ask where {topic} is costing me something, and where it is not.",
    "Name one person who needs {kw} from me, and do something about it by {weekday}.",
)
_PRAYERS = (
    "{person}'s {condition}",
    "the {last} family ({condition})",
    "{place}, after {disaster}",
    "our {job} friends working the night shift",
    "wisdom about {kw}",
    "{person} and {person2}, still not speaking",
    "the mission partners in {place}",
)
_QUESTIONS_IN_NOTE = (
    "Where do I resist {kw}?",
    "What would {topic} look like in my family this week?",
    "Why does {ref} end the way it does?",
    "Who in my life needs {kw} from me?",
    "What is the difference between {kw} and {kw2}?",
    "When did {image} feel like my own story?",
    "What would the first listeners have found hardest here?",
)
_REFLECTIONS = (
    "I came in tired and {speaker_short} talked about {kw}, which was exactly what I needed.",
    "Thinking about {person} again, and how {kw} has been hard between us.",
    "Honestly, {topic} is the area where I am most stuck right now.",
    "I want to remember the part about {kw2}.",
    "On the drive home I kept thinking about {image}.",
    "This is the {ordinal} sermon on {topic} this year and it still gets me.",
    "Convicted about {kw}, especially at work on {weekday}s.",
    "{person} texted after the service asking about {kw}; call back.",
    "Need to tell {person} what {speaker_short} said about {kw}.",
    "Felt this one. {Kw} has been the theme of my whole month.",
    "Didn't agree with everything today, especially the part about {kw2}. Ask at small group.",
    "Wrote {ref} on a sticky note for the fridge.",
)
_CLOSERS = (
    "Amen.",
    "Good word.",
    "Read it again Tuesday.",
    "Ask about this.",
    "More next week.",
    "Lunch with {person} after.",
)
_QUESTION_TEMPLATES = (
    "What did {speaker} say about {kw}?",
    "Which sermon was on {other_ref}?",
    "What were the main points about {topic}?",
    "When did we hear a sermon about {topic}?",
    "What illustration did {speaker_short} use about {kw}?",
    "How does {other_book} talk about {kw}?",
    "What should I pray for about {kw}?",
    "What practices were suggested for {topic}?",
    "Who preached on {other_book}?",
    "What did the sermon series {series} teach about {kw}?",
    "Can you summarize my notes on {topic} from {note_year}?",
    "What was the quote about {kw} in the sermon on {topic}?",
    "Was there a story about {a_job} from {place}?",
    "What questions were we asked to think about after the sermon on {kw}?",
    "Which speakers talked about {topic} and {kw2}?",
)
_TITLE_TEMPLATES = (  # title-cased after filling
    "{kw} in {image}",
    "the {kw} of {image}",
    "when {kw} comes home",
    "{kw} and {kw2}",
    "learning {kw} from {book}",
    "{image}: a sermon on {topic}",
    "what {kw} asks of us",
    "{topic} for ordinary days",
    "no shortcut through {image}",
    "{kw}, again",
    "{kw} on a {weekday}",
    "the long road of {topic}",
)
_SMALL_WORDS = frozenset(
    ("a", "an", "and", "as", "at", "for", "from", "in", "of", "on", "the", "to")
)
_ORDINALS = ("second", "third", "fourth", "fifth")
_TRIES = 8  # chunks drawn looking for one that still fits under the top of the range
_POOLS: Mapping[str, Sequence[str]] = {
    "topic": _TOPIC_NAMES,
    "book": _BOOK_NAMES,
    "other_book": _BOOK_NAMES,
    "image": _IMAGES,
    "place": _PLACES,
    "job": _JOBS,
    "event": _EVENTS,
    "object": _OBJECTS,
    "practice": _PRACTICES,
    "audience": _AUDIENCES,
    "condition": _CONDITIONS,
    "disaster": _DISASTERS,
    "weekday": _WEEKDAYS,
    "person": _FIRST_NAMES,
    "person2": _FIRST_NAMES,
    "last": _LAST_NAMES,
    "series": _SERIES,
    "ordinal": _ORDINALS,
}


@dataclass(frozen=True)
class SyntheticNote:
    id: str
    title: str
    text: str


class _Slots(dict[str, str]):
    """Template slots: fixed per note where set, otherwise drawn fresh at each use.

    {kw}, {kw2} and {kw3} are three different keywords of the note's topic, redrawn for every
    template; a slot written with a capital first letter ({Kw}) is the same slot capitalised.
    """

    def __init__(
        self,
        rng: random.Random,
        fixed: Mapping[str, str],
        keywords: Sequence[str],
        verses: tuple[int, int] = (1, 40),
    ) -> None:
        super().__init__(fixed)
        self._rng = rng
        self._keywords = keywords
        self._verses = verses

    def fill(self, template: str) -> str:
        keywords = self._keywords
        first = self._rng.randrange(len(keywords))
        self["kw"] = keywords[first]
        self["kw2"] = keywords[(first + 1) % len(keywords)]
        self["kw3"] = keywords[(first + 2) % len(keywords)]
        return template.format_map(self)

    def __missing__(self, key: str) -> str:
        lower = key[0].lower() + key[1:]
        if lower != key:
            value = self[lower]
            return value[0].upper() + value[1:]
        rng = self._rng
        if key.startswith("verse"):
            return str(rng.randint(*self._verses))
        if key == "small":
            return str(rng.randint(2, 7))
        if key == "year":
            return str(rng.randint(1962, 2024))
        if key == "note_year":
            return str(rng.randint(_FIRST_DATE.year, _LAST_DATE.year))
        if key == "other_ref":
            book, chapters = rng.choice(_BOOKS)
            return f"{_shown(book)} {rng.randint(1, chapters)}"
        if key == "a_job":
            job = rng.choice(_JOBS)
            return f"an {job}" if job[0] in "aeiou" else f"a {job}"
        return rng.choice(_POOLS[key])


@functools.cache
def _strides(size: int) -> tuple[int, ...]:
    return tuple(s for s in range(1, size) if math.gcd(s, size) == 1) or (1,)


class _Deck:
    """A pool dealt so that a long note repeats a line only after it has used them all.

    It walks the pool from a random start by a random stride coprime with its size, which
    visits every card once per round: two draws per note instead of a shuffle's dozens.
    """

    def __init__(self, rng: random.Random, pool: Sequence[str]) -> None:
        self._pool = pool
        self._at = rng.randrange(len(pool))
        self._stride = rng.choice(_strides(len(pool)))

    def deal(self) -> str:
        self._at = (self._at + self._stride) % len(self._pool)
        return self._pool[self._at]


def _speaker(rng: random.Random) -> tuple[str, str, str]:
    """(speaker line value, short form used in the notes, full name for questions)."""
    title = rng.choice(_TITLES)
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    name = f"{title} {first} {last}".strip()
    short = f"{title.removeprefix('Rev. ')} {last}" if title else first
    role = f" ({rng.choice(_ROLES)})" if rng.random() < 0.3 else ""
    return name + role, short, name


def _shown(book: str) -> str:
    return "Psalm" if book == "Psalms" else book


def _reference(rng: random.Random) -> tuple[str, int, tuple[int, int], str]:
    """(book, chapter, first and last verse, reference such as "Psalm 46:1-11")."""
    book, chapters = rng.choice(_BOOKS)
    chapter = rng.randint(1, chapters)
    start = rng.randint(1, 24)
    end = start + rng.randint(2, 18)
    return book, chapter, (start, end), f"{_shown(book)} {chapter}:{start}-{end}"


def _title_case(text: str) -> str:
    words = text.split(" ")
    return " ".join(
        word
        if index and word in _SMALL_WORDS and not words[index - 1].endswith(":")
        else word[:1].upper() + word[1:]
        for index, word in enumerate(words)
    )


class _NoteBody:
    """The lines under a note's header, in one of three styles, for as long as asked."""

    def __init__(self, rng: random.Random, slots: _Slots) -> None:
        self._rng = rng
        self._slots = slots
        self._style = rng.choice(("outline", "bullets", "journal"))
        self._points = _Deck(rng, _POINTS)
        self._subpoints = _Deck(rng, _SUBPOINTS)
        self._reflections = _Deck(rng, _REFLECTIONS)

    def _item(self, text: str, number: int) -> str:
        if self._style == "journal":
            return text
        if self._style == "outline":
            return f"{number}. {text}"
        return f"- {text}"

    def _section(self, kind: str) -> list[str]:
        rng, fill = self._rng, self._slots.fill
        if kind == "points":
            lines: list[str] = []
            for number in range(1, rng.randint(3, 6) + 1):
                lines.append(self._item(fill(self._points.deal()), number))
                if self._style != "journal" and rng.random() < 0.45:
                    lines.append("   - " + fill(self._subpoints.deal()))
            return lines
        if kind == "illustration":
            return [fill(rng.choice(_ILLUSTRATIONS))]
        if kind == "quote":
            return ["Quote: " + fill(quote) for quote in rng.sample(_QUOTES, 2)]
        if kind == "prayer":
            return ["- " + fill(rng.choice(_PRAYERS)) for _ in range(rng.randint(2, 4))]
        if kind == "questions":
            chosen = rng.sample(_QUESTIONS_IN_NOTE, 3)
            return [f"{number}. {fill(q)}" for number, q in enumerate(chosen, 1)]
        if kind == "application":
            chosen = rng.sample(_APPLICATIONS, rng.randint(2, 3))
            return [self._item(fill(a), number) for number, a in enumerate(chosen, 1)]
        return [fill(self._reflections.deal()) for _ in range(rng.randint(1, 2))]

    def chunks(self) -> Iterator[str]:
        """Body text in reading order, endlessly; a heading rides with its section's first line."""
        rng = self._rng
        later = ["illustration", "quote", "application", "prayer", "questions", "reflection"]
        rng.shuffle(later)
        plan = ["points", *later[: rng.randint(3, len(later))]]
        while True:
            for kind in plan:
                if self._style == "journal" and kind not in ("prayer", "questions"):
                    opening = "\n"  # journal notes run on in paragraphs, without headings
                else:
                    opening = f"\n## {self._slots.fill(rng.choice(_HEADINGS[kind]))}\n"
                for number, line in enumerate(self._section(kind)):
                    yield opening + line if number == 0 else line
            plan = ["points", "reflection"]


def _note(seed: int, index: int, low: int, high: int) -> SyntheticNote:
    rng = random.Random(f"scribes-note:{seed}:{index}")
    topic = rng.choice(_TOPIC_NAMES)
    book, chapter, verses, ref = _reference(rng)
    speaker, short, _ = _speaker(rng)
    fixed = {"topic": topic, "book": book, "chapter": str(chapter), "ref": ref}
    slots = _Slots(rng, {**fixed, "speaker_short": short}, _TOPICS[topic], verses)
    title = _title_case(slots.fill(rng.choice(_TITLE_TEMPLATES)))
    preached = _FIRST_DATE + timedelta(weeks=rng.randrange(_WEEKS))
    lines = [f"# {title}", "", f"Speaker: {speaker}", f"Date: {preached.isoformat()}"]
    lines.append(f"Scripture: {ref}")
    if rng.random() < 0.6:
        lines.append(f"Church: {rng.choice(_CHURCHES)}")
    if rng.random() < 0.35:
        lines.append(f"Series: {rng.choice(_SERIES)} (week {rng.randint(1, 8)})")
    words = sum(len(line.split()) for line in lines)
    target = rng.randint(low, high)
    chunks = _NoteBody(rng, slots).chunks()
    while words < target:
        chunk = next(chunks)
        size = len(chunk.split())
        for _ in range(_TRIES):
            if words + size <= high:
                break
            chunk = next(chunks)
            size = len(chunk.split())
        else:
            # Nothing near the top of the range fits: end on a short closing line.
            closers = (slots.fill(closer) for closer in _CLOSERS)
            fitting = [c for c in closers if len(c.split()) <= high - words]
            if not fitting:
                break
            chunk = "\n" + rng.choice(fitting)
            size = len(chunk.split())
        lines.append(chunk)
        words += size
    return SyntheticNote(id=f"syn-{seed}-{index:06d}", title=title, text="\n".join(lines) + "\n")


def synthetic_notes(
    count: int, *, seed: int = 0, words: tuple[int, int] = (150, 600)
) -> Iterator[SyntheticNote]:
    """`count` sermon notes, each `words[0]` to `words[1]` words long.

    Words are `str.split()` tokens of the whole text, header included; a range too small to
    hold a note's header gets the header alone. Bad arguments fail here, not at first use.
    """
    low, high = words
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    if not 1 <= low <= high:
        raise ValueError(f"words must be (low, high) with 1 <= low <= high, got {words}")
    return (_note(seed, index, low, high) for index in range(count))


def synthetic_questions(count: int, *, seed: int = 0) -> list[str]:
    """Plausible questions about notes like these, drawn from the same vocabulary."""
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    rng = random.Random(f"scribes-questions:{seed}")
    questions: list[str] = []
    for _ in range(count):
        topic = rng.choice(_TOPIC_NAMES)
        _, short, name = _speaker(rng)
        fixed = {"topic": topic, "speaker": name, "speaker_short": short}
        questions.append(_Slots(rng, fixed, _TOPICS[topic]).fill(rng.choice(_QUESTION_TEMPLATES)))
    return questions


def write_corpus(
    directory: Path, count: int, *, seed: int = 0, words: tuple[int, int] = (150, 600)
) -> list[Path]:
    """Write `count` notes as `<id>.md` under `directory` (created if missing)."""
    notes = synthetic_notes(count, seed=seed, words=words)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for note in notes:
        path = directory / f"{note.id}.md"
        path.write_text(note.text, encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.corpus",
        description="Write a synthetic corpus of sermon notes (Markdown) for benchmarks. "
        "The same --count, --seed and --words always give the same files.",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write into")
    parser.add_argument("--count", type=int, default=1000, help="notes to write (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument(
        "--words",
        type=int,
        nargs=2,
        default=(150, 600),
        metavar=("MIN", "MAX"),
        help="word range per note (default 150 600)",
    )
    args = parser.parse_args(argv)
    low, high = args.words
    started = time.perf_counter()
    try:
        paths = write_corpus(args.out_dir, args.count, seed=args.seed, words=(low, high))
    except ValueError as exc:
        parser.error(str(exc))
    elapsed = time.perf_counter() - started
    print(f"wrote {len(paths)} notes to {args.out_dir} in {elapsed:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
