"""`ContrastEncoder`: prompt rows to model inputs, as a DataLoader ``collate_fn``.

Encoding a batch (chat template, tokenizer, the image processor's resize/normalise of every image) is CPU
work of the same order as the accelerator's forward at the 7B shape. Done inside ``predict_step`` it runs
in series with the forward; done as the DataLoader's ``collate_fn`` it runs in the loader's worker
processes while the accelerator works on the previous batch, and the tensors come back in pinned memory
(``pin_memory=True``) for an asynchronous host-to-device copy. The encoder holds the processor and
tokenizer only, never the model, so it is cheap to hand to (forked or spawned) workers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from l2s_lightning.data.items import PromptItem
from l2s_lightning.extraction.forward import ContextTail, ContrastInputs
from l2s_lightning.extraction.prompt_split import shared_positions_mask, split_context_prompt
from l2s_lightning.models.loading import LoadedModel, ModelSpec
from l2s_lightning.prompts import (
    assistant_turn_suffix,
    encode_completions,
    encode_prompts,
    pad_token_id,
    render_prompt,
    right_pad,
)


class _ImageProcessingOnce:
    """Stands in for a processor's ``image_processor`` while one batch is encoded: a second call with the
    same image objects and arguments returns (a copy of) the first call's result instead of resizing and
    normalising every image again. Every other attribute is the wrapped processor's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._results: dict[tuple, Any] = {}

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        objects = images if isinstance(images, (list, tuple)) else [images]
        key = (tuple(id(image) for image in objects), repr(args), repr(sorted(kwargs.items())))
        if key not in self._results:
            self._results[key] = self._inner(images, *args, **kwargs)
        return copy.copy(self._results[key])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def image_processing_once(processor: Any) -> Iterator[None]:
    """While open, ``processor`` processes each list of images once however often it is called with it
    (the prompt with a template suffix and the plain prompt of the context pass share their images)."""
    inner = getattr(processor, "image_processor", None)  # None for a text-only model (no processor)
    if inner is None:
        yield
        return
    processor.image_processor = _ImageProcessingOnce(inner)
    try:
        yield
    finally:
        processor.image_processor = inner


@dataclass
class EncodedBatch:
    """One batch as the loader hands it over: the rows (images dropped: they now live in ``inputs``) and
    their encodings as CPU tensors."""

    items: list[PromptItem]
    inputs: ContrastInputs

    def pin_memory(self) -> EncodedBatch:
        """The same batch with every tensor in page-locked memory (called by ``DataLoader(pin_memory=True)``)."""
        inputs = self.inputs
        pinned = ContrastInputs(
            prefix={key: value.pin_memory() for key, value in inputs.prefix.items()},
            completions=inputs.completions.pin_memory(),
            completion_lengths=inputs.completion_lengths.pin_memory(),
            context=None if inputs.context is None else inputs.context.pin_memory(),
        )
        return EncodedBatch(self.items, pinned)


@dataclass
class ContrastEncoder:
    """Encodes prompt rows for P2S extraction: X = prompt (+ template suffix), T+ and T- (+ the chat
    template's end-of-turn text where the template closes the turn), and, when a suffix is used, the plain
    prompt h is read from, as the tail that follows the tokens it shares with X. Call it on a list of
    :class:`PromptItem` to get an :class:`EncodedBatch`."""

    processor: Any
    tokenizer: Any
    spec: ModelSpec

    @classmethod
    def of(cls, loaded: LoadedModel) -> ContrastEncoder:
        """The encoder of a loaded model (its processor and tokenizer, not its weights)."""
        return cls(processor=loaded.processor, tokenizer=loaded.tokenizer, spec=loaded.spec)

    def encode(self, items: list[PromptItem]) -> ContrastInputs:
        """Left-padded prompts (with pixel values for MLLMs) and right-padded completions, rows 2i / 2i+1
        the positive / negative completion of item i; with a template suffix, the plain prompt's tail."""
        images = [item.image for item in items]
        has_image = [image is not None for image in images]
        prompts = [render_prompt(self, item.question + item.suffix, h) for item, h in zip(items, has_image)]
        context = None
        with image_processing_once(self.processor):
            prefix = encode_prompts(self, prompts, images)
            if any(item.suffix for item in items):
                plain = [render_prompt(self, item.question, h) for item, h in zip(items, has_image)]
                context = self._context_tail(prefix, encode_prompts(self, plain, images))
        closing = assistant_turn_suffix(self)
        texts = []
        for item in items:
            end = closing if item.close_turn else ""
            texts += [item.positive + end, item.negative + end]
        completions, lengths = encode_completions(self.tokenizer, texts)
        return ContrastInputs(prefix=prefix, completions=completions, completion_lengths=lengths, context=context)

    def _context_tail(self, prefix: dict[str, torch.Tensor], plain: dict[str, torch.Tensor]) -> ContextTail:
        split = split_context_prompt(prefix, plain, getattr(self.processor, "image_token_id", None))
        ids, lengths = right_pad(split.tails, pad_token_id(self.tokenizer))
        return ContextTail(ids, lengths, shared_positions_mask(prefix["attention_mask"], split.shared))

    def __call__(self, items: list[PromptItem]) -> EncodedBatch:
        inputs = self.encode(items)
        return EncodedBatch([dataclasses.replace(item, image=None) for item in items], inputs)
