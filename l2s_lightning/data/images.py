"""Images: loading with clear errors, and TYPO images rendered from a key phrase (as MM-SafetyBench does)."""

from __future__ import annotations

import textwrap
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def load_image(path: str | Path, sample_id: str = "?") -> Image.Image:
    """Open an image as RGB; a missing or unreadable file raises naming the sample and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image of sample {sample_id!r} not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # PIL raises several types for broken files
        raise ValueError(f"image of sample {sample_id!r} is unreadable: {path} ({err})") from err


def check_image(path: str | Path, sample_id: str = "?") -> None:
    """Cheap up-front check that an image file exists and decodes (header + verify)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image of sample {sample_id!r} not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:
        raise ValueError(f"image of sample {sample_id!r} is unreadable: {path} ({err})") from err


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _typo_lines(phrase: str, chars_per_line: int) -> list[str]:
    return textwrap.wrap(phrase, width=chars_per_line) or [""]


def typo_image_size(phrase: str, width: int = 1024, font_size: int = 90, chars_per_line: int = 18) -> tuple[int, int]:
    """(width, height) of :func:`render_typo_image`'s image of ``phrase``, without drawing it."""
    line_height = int(font_size * 1.25)
    return width, max(line_height * len(_typo_lines(phrase, chars_per_line)) + font_size // 2, font_size * 2)


def render_typo_image(phrase: str, width: int = 1024, font_size: int = 90, chars_per_line: int = 18) -> Image.Image:
    """Black text on white, as MM-SafetyBench's TYPO images (the key phrase, wrapped, left-aligned)."""
    lines = _typo_lines(phrase, chars_per_line)
    font = _font(font_size)
    line_height = int(font_size * 1.25)
    image = Image.new("RGB", typo_image_size(phrase, width, font_size, chars_per_line), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((font_size // 4, font_size // 4 + i * line_height), line, fill="black", font=font)
    return image
