"""Note files on disk: which to take, what to call them, how to read them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NOTE_SUFFIXES", "NoteFile", "collect_note_files", "read_note"]

NOTE_SUFFIXES = (".md", ".markdown", ".txt")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.~-]+")
_HEADING = re.compile(r"^\s*#{1,6}\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True, slots=True)
class NoteFile:
    path: Path
    document_id: str
    title: str
    text: str


def collect_note_files(paths: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(root, file) pairs for every note under `paths`; a path that is not there is an error."""
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_file():
            found.append((path.parent, path))
        elif path.is_dir():
            found.extend(
                (path, file)
                for file in sorted(path.rglob("*"))
                if file.is_file()
                and file.suffix.lower() in NOTE_SUFFIXES
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
                and file.name.lower() != "readme.md"
            )
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def document_id_for(root: Path, file: Path) -> str:
    """A stable id from the path, so ingesting the same file again replaces it."""
    relative = file.relative_to(root).with_suffix("")
    parts = [_UNSAFE.sub("-", part).strip("-._~") or "note" for part in relative.parts]
    return ":".join(parts)[:200]


def read_note(root: Path, file: Path) -> NoteFile:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text") from exc
    title = file.stem.replace("-", " ").replace("_", " ").strip() or file.name
    for line in text.splitlines()[:20]:
        match = _HEADING.match(line)
        if match:
            title = match.group(1)
            break
    return NoteFile(
        path=file, document_id=document_id_for(root, file), title=title[:300], text=text
    )
