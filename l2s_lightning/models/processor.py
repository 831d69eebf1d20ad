"""Loading processors, with the one workaround this project needs (isolated here and tested).

Without a working torchvision, transformers 5.x turns every video processor into a dummy, and the Qwen2-VL
/ Qwen2.5-VL processors cannot be built because they require one (upstream huggingface/transformers#48558).
We only need images: `load_processor` then builds the same processor class without its video processor.
"""

from __future__ import annotations

import json
import os
from functools import cache, lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def has_working_torchvision() -> bool:
    """True when torchvision imports and its compiled operators match torch."""
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms  # noqa: F401
    except Exception:
        return False
    return True


@cache
def image_only(processor_class: type) -> type:
    """A subclass of a processor class whose sub-processors are the image processor and tokenizer only (cached:
    one subclass per class). ``ProcessorMixin`` derives the sub-processors from ``__init__``'s signature."""

    class ImageOnlyProcessor(processor_class):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
            processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        def __reduce__(self):
            # a class made here cannot be pickled by name: rebuild it from the base class (spawned loader workers,
            # ddp_spawn get the processor pickled)
            return _new_image_only, (processor_class,), self.__dict__.copy()

    ImageOnlyProcessor.__name__ = f"{processor_class.__name__}ImageOnly"
    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    return ImageOnlyProcessor


def _new_image_only(processor_class: type) -> Any:
    """An empty instance of ``image_only(processor_class)``: unpickling fills its attributes."""
    cls = image_only(processor_class)
    return cls.__new__(cls)


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
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        return PROCESSOR_MAPPING_NAMES.get(json.loads(config.read_text()).get("model_type", ""))
    return None


def _video_processor_class(folder: Path) -> type | None:
    """The folder's processor class when it needs a video processor (the only case the workaround covers)."""
    import transformers

    name = _processor_class_name(folder) if folder.is_dir() else None
    processor_class = getattr(transformers, name, None) if name else None
    if processor_class is None or "video_processor" not in processor_class.get_attributes():
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
