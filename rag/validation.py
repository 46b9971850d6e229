"""Bad input refused early, at the API, with a code and a message a person can act on."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from rag.keys import DOCUMENT_ID_PATTERN
from rag.tokens import TokenCounter

__all__ = ["InvalidInput", "validate_document", "validate_question"]

_ALLOWED_CONTROL = {"\n", "\r", "\t"}
# Everything str.splitlines() breaks a line at: a title is one line in every renderer.
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_METADATA_MAX_BYTES = 16_384
_TITLE_MAX_CHARS = 300


class InvalidInput(ValueError):
    """`status` is the HTTP status the API answers with: 400 for bad content, 422 for a
    field that is well formed but not acceptable here (a callback URL not allowed)."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _has_control_characters(text: str) -> bool:
    if text.isprintable():  # the usual case, checked in C: no control, format or unassigned
        return False
    return any(
        unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn")
        and char not in _ALLOWED_CONTROL
        for char in text
    )


def validate_question(question: str, *, counter: TokenCounter, max_tokens: int) -> str:
    cleaned = question.strip()
    if not cleaned:
        raise InvalidInput("empty_question", "question is empty; ask something about your notes")
    if _has_control_characters(cleaned):
        raise InvalidInput(
            "control_characters", "question contains control characters; send plain text"
        )
    # Checked on characters first so that a megabyte of text is refused before tokenising.
    if len(cleaned) > max_tokens * 12 or counter.count(cleaned) > max_tokens:
        raise InvalidInput(
            "question_too_long",
            f"question is longer than {max_tokens} tokens; shorten it",
        )
    return cleaned


def validate_document(
    *,
    document_id: str | None,
    title: str,
    text: str,
    metadata: dict[str, Any] | None,
    max_bytes: int,
) -> None:
    """Refuse a document that cannot be stored as sent; `document_id` None: one is derived.

    Every check that reads characters runs before anything encodes or hashes them: a lone
    surrogate ("\\ud800" in JSON) cannot be encoded as UTF-8 and is refused here.
    """
    if document_id is not None and not DOCUMENT_ID_PATTERN.fullmatch(document_id):
        raise InvalidInput(
            "invalid_document_id",
            "document id must be 1-200 characters of letters, digits and . _ : ~ -, "
            "starting with a letter or digit",
        )
    if not title.strip():
        raise InvalidInput("empty_title", "title is empty")
    if (
        len(title) > _TITLE_MAX_CHARS
        or _has_control_characters(title)
        or not _LINE_BREAKS.isdisjoint(title)
    ):
        raise InvalidInput(
            "invalid_title",
            f"title must be one line of at most {_TITLE_MAX_CHARS} characters of plain text",
        )
    if not text.strip():
        raise InvalidInput("empty_text", "text is empty; there is nothing to index")
    if _has_control_characters(text):
        raise InvalidInput(
            "control_characters",
            "text contains control characters or invalid Unicode (a lone surrogate); "
            "send plain text",
        )
    if len(text.encode()) > max_bytes:
        raise InvalidInput(
            "document_too_large", f"text is larger than {max_bytes} bytes; split the document"
        )
    if metadata is not None and len(json.dumps(metadata)) > _METADATA_MAX_BYTES:
        raise InvalidInput(
            "metadata_too_large", f"metadata is larger than {_METADATA_MAX_BYTES} bytes"
        )
