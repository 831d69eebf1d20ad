"""Loading processors, with the one workaround this project needs (isolated here and tested).

Without a working torchvision, transformers 5.x turns every video processor into a dummy, and the Qwen2-VL
/ Qwen2.5-VL processors cannot be built because they require one (upstream huggingface/transformers#48558).
We only need images: `load_processor` then builds the same processor class without its video processor.
(:func:`l2s_lightning.internals.image_only`).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from l2s_lightning.internals import image_only, needs_video_processor, processor_class_name

__all__ = ["has_working_torchvision", "image_only", "load_processor"]  # image_only: from l2s_lightning.internals


@lru_cache(maxsize=1)
def has_working_torchvision() -> bool:
    """True when torchvision imports and its compiled operators match torch."""
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms  # noqa: F401
    except Exception:
        return False
    return True


def _processor_class_name(folder: Path) -> str | None:
    """The processor class recorded in the folder's configs, else the one mapped to its ``model_type``."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get("processor_class")
            if value:
                return value
    config = folder / "config.json"
    if config.is_file():
        return processor_class_name(json.loads(config.read_text()).get("model_type", ""))
    return None


def _video_processor_class(folder: Path) -> type | None:
    """The folder's processor class when it needs a video processor (the only case the workaround covers)."""
    import transformers

    name = _processor_class_name(folder) if folder.is_dir() else None
    processor_class = getattr(transformers, name, None) if name else None
    if processor_class is None or not needs_video_processor(processor_class):
        return None
    return processor_class


def _chat_template(folder: Path, tokenizer: Any) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        path = folder / name
        if path.is_file():
            text = path.read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return getattr(tokenizer, "chat_template", None)


def load_processor(path: str | os.PathLike, **kwargs: Any) -> Any:
    """`AutoProcessor.from_pretrained`; without torchvision, processors that need a video processor (Qwen2-VL,
    Qwen2.5-VL) are built image-only (same class, no ``video_processor``). Other cases are left untouched."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except Exception as err:
        if has_working_torchvision():
            raise
        folder = Path(path)
        processor_class = _video_processor_class(folder)
        if processor_class is None:
            raise
        from transformers import AutoImageProcessor, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
        except Exception:
            raise err from None
        return image_only(processor_class)(image_processor, tokenizer, chat_template=_chat_template(folder, tokenizer))
