"""Data files shipped inside the package, found the same way in a checkout and in an installed wheel.

Folders: ``evaluation/`` (phrase lists, judge prompt templates, CHAIR synonyms) and ``templates/`` (contrastive
template sets, one YAML each).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def bundled_file(folder: str, name: str) -> Traversable | None:
    """The bundled file ``<folder>/<name>``, or None when there is none."""
    found = resources.files(__name__).joinpath(folder, name)
    return found if name and found.is_file() else None


def bundled_names(folder: str, suffix: str = "") -> list[str]:
    """The sorted names of the files bundled in ``folder`` that end with ``suffix``."""
    root = resources.files(__name__).joinpath(folder)
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir() if entry.is_file() and entry.name.endswith(suffix))
