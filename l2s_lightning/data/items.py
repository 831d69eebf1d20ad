"""`PromptItem`: one prompt row, ready to be encoded."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass
class PromptItem:
    """One prompt row, ready to be encoded: question, optional image, contrast and split."""

    id: str
    question: str
    category: str
    behaviour: str
    positive: str
    negative: str
    suffix: str
    close_turn: bool
    instruction: str
    split: str
    benchmark: str
    label: str = ""
    image: Image.Image | None = None
    image_path: str = ""
    filler: bool = False  # a copy of the last row that fills the last batch (its output is dropped)
