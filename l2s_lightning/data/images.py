"""Images: loading with clear errors, and TYPO images rendered from a key phrase (as MM-SafetyBench does)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from l2s_lightning.errors import L2SInputError

TYPO_FONT = "DejaVuSansMono-Bold.ttf"  # a monospace bold face, as MM-SafetyBench's FreeMonoBold; matplotlib ships it


def load_image(path: str | Path, sample_id: str = "?") -> Image.Image:
    """Open an image as RGB, turned upright by its EXIF orientation (as ``transformers.image_utils.load_image``
    does); a missing or unreadable file raises naming the sample and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image of sample {sample_id!r} not found: {path}")
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except Exception as err:  # PIL raises several types for broken files
        raise L2SInputError(f"image of sample {sample_id!r} is unreadable: {path} ({err})") from err


def check_image(path: str | Path, sample_id: str = "?") -> None:
    """Up-front check that an image file exists and decodes: its header and structure (``verify``), then all
    of its data (a JPEG at 1/8 scale, which still reads every byte: ``verify`` alone passes a truncated JPEG)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image of sample {sample_id!r} not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))  # JPEG only; others decode whole
            image.load()
    except Exception as err:
        raise L2SInputError(f"image of sample {sample_id!r} is unreadable: {path} ({err})") from err


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """The TYPO font: matplotlib's copy, so that every machine renders the same image."""
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / TYPO_FONT), size)


def _typo_lines(phrase: str, width: int, font_size: int) -> list[str]:
    """``phrase`` wrapped at word boundaries so that every line fits ``width`` pixels (with the left margin);
    a word wider than a line is broken by characters."""
    font, room = _font(font_size), width - font_size // 2
    lines: list[str] = []
    line = ""
    for word in phrase.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= room:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:
            if line and font.getlength(line + char) > room:
                lines.append(line)
                line = ""
            line += char
    return lines + [line] if line or not lines else lines


def _typo_size(lines: list[str], width: int, font_size: int) -> tuple[int, int]:
    return width, max(int(font_size * 1.25) * len(lines) + font_size // 2, font_size * 2)


def typo_image_size(phrase: str, width: int = 1024, font_size: int = 90) -> tuple[int, int]:
    """(width, height) of :func:`render_typo_image`'s image of ``phrase``, without drawing it."""
    return _typo_size(_typo_lines(phrase, width, font_size), width, font_size)


def render_typo_image(phrase: str, width: int = 1024, font_size: int = 90) -> Image.Image:
    """Black text on white, as MM-SafetyBench's TYPO images: the key phrase in a monospace bold face, wrapped to
    the image's width, left-aligned."""
    font = _font(font_size)
    line_height = int(font_size * 1.25)
    lines = _typo_lines(phrase, width, font_size)
    image = Image.new("RGB", _typo_size(lines, width, font_size), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((font_size // 4, font_size // 4 + i * line_height), line, fill="black", font=font)
    return image
