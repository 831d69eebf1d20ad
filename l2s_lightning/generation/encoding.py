"""`PromptEncoder`: prompt rows to generation inputs, as a DataLoader ``collate_fn``.

As for extraction (:mod:`l2s_lightning.extraction.encoding`): the chat template, tokenizer and image
processor run in the loader's worker processes while the accelerator generates for the previous batch,
instead of in series with it inside ``predict_step``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from l2s_lightning.data.items import PromptItem
from l2s_lightning.models.loading import LoadedModel, ModelSpec
from l2s_lightning.prompts import baseline_instructions, encode_prompts, render_prompt


@dataclass
class PromptBatch:
    """One batch as the loader hands it over: the rows (images dropped), their rendered prompts and the
    left-padded encodings (CPU tensors)."""

    items: list[PromptItem]
    prompts: list[str]
    encoded: dict[str, torch.Tensor]

    def pin_memory(self) -> PromptBatch:
        """The same batch with its tensors in page-locked memory (``DataLoader(pin_memory=True)``)."""
        return PromptBatch(self.items, self.prompts, {key: value.pin_memory() for key, value in self.encoded.items()})


@dataclass
class PromptEncoder:
    """Renders and encodes the prompts of one steering method. ``method="prompt"`` puts an instruction
    before each question: ``instruction`` (the template set's ``prompt_baseline``) or else each row's
    behaviour instruction."""

    processor: Any
    tokenizer: Any
    spec: ModelSpec
    method: str = "none"
    instruction: str = ""

    @classmethod
    def of(cls, loaded: LoadedModel, method: str) -> PromptEncoder:
        """The encoder of a loaded model (its processor and tokenizer, not its weights)."""
        return cls(processor=loaded.processor, tokenizer=loaded.tokenizer, spec=loaded.spec, method=method)

    def prompts(self, items: list[PromptItem], instruction: str = "") -> list[str]:
        """The rendered prompt of each row (``instruction`` overrides the encoder's for the prompt baseline)."""
        if self.method != "prompt":
            return [render_prompt(self, item.question, item.image is not None) for item in items]
        instructions = baseline_instructions(items, instruction or self.instruction)
        return [
            render_prompt(self, item.question, item.image is not None, text) for item, text in zip(items, instructions)
        ]

    def __call__(self, items: list[PromptItem]) -> PromptBatch:
        prompts = self.prompts(items)
        encoded = encode_prompts(self, prompts, [item.image for item in items])
        return PromptBatch([dataclasses.replace(item, image=None) for item in items], prompts, encoded)
