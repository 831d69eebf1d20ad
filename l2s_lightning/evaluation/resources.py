"""Data files of the evaluation (phrase lists, judge prompt templates, CHAIR synonyms) and phrase matching.

The files live in ``l2s_lightning/resources/evaluation/``. Wherever a resource name is accepted, a path to a
file of one's own works too.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from l2s_lightning.errors import L2SInputError
from l2s_lightning.resources import bundled_file, bundled_names

RESOURCE_DIR = "evaluation"


def resource_text(name_or_path: str) -> str:
    """The text of a file path, or of a bundled resource named ``name_or_path`` (as is, not stripped)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    bundled = bundled_file(RESOURCE_DIR, name_or_path)
    if bundled is not None:
        return bundled.read_text(encoding="utf-8")
    available = bundled_names(RESOURCE_DIR)
    raise FileNotFoundError(f"{name_or_path!r} is neither a file nor a bundled evaluation resource ({available})")


def read_lines(name_or_path: str) -> list[str]:
    """Non-empty, stripped lines of a resource or file, ``#`` comment lines left out."""
    lines = (line.strip() for line in resource_text(name_or_path).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def normalize_text(text: str) -> str:
    """Lower-case, curly apostrophes/quotes made straight, runs of whitespace collapsed to one space."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", text)


class PhraseMatcher:
    """Case-insensitive whole-word matching of a phrase list (``(?<!\\w)phrase(?!\\w)``) on normalised text."""

    def __init__(self, phrases: list[str]):
        cleaned = sorted({normalize_text(p).strip() for p in phrases if p.strip()}, key=len, reverse=True)
        if not cleaned:
            raise L2SInputError("empty phrase list")
        self.phrases = cleaned
        self._regex = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in cleaned) + r")(?!\w)")

    @classmethod
    def from_resource(cls, name_or_path: str) -> PhraseMatcher:
        return _cached_matcher(name_or_path)

    def first(self, text: str) -> tuple[int, str] | None:
        """(character offset in the normalised text, phrase) of the first match, or None."""
        match = self._regex.search(normalize_text(text))
        return (match.start(), match.group(0)) if match else None

    def contains(self, text: str) -> bool:
        return self.first(text) is not None


@lru_cache(maxsize=16)
def _cached_matcher(name_or_path: str) -> PhraseMatcher:
    return PhraseMatcher(read_lines(name_or_path))
