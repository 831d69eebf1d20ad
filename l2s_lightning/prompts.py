"""Prompts through the processor's (or tokenizer's) chat template, and batch encoding with left padding."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol

import torch
from PIL import Image

from l2s_lightning.errors import L2SInputError
from l2s_lightning.models.loading import ModelSpec


class PromptCoder(Protocol):
    """What prompt rendering and encoding need of a model: its processor (None for text-only models),
    tokenizer and spec. A :class:`~l2s_lightning.models.loading.LoadedModel` is one; so is an encoder that
    holds no weights (:class:`~l2s_lightning.extraction.encoding.ContrastEncoder`)."""

    processor: Any
    tokenizer: Any
    spec: ModelSpec


def user_message(question: str, has_image: bool, instruction: str = "") -> dict[str, Any]:
    """One user turn; an instruction (prompt baseline) is prepended to the question."""
    text = f"{instruction}\n\n{question}" if instruction else question
    if not has_image:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}


def _templater(loaded: PromptCoder) -> Any:
    return loaded.processor if loaded.processor is not None else loaded.tokenizer


def baseline_instructions(items: Sequence[Any], prompt_baseline: str = "") -> list[str]:
    """The prompt baseline's instruction for each item: ``prompt_baseline`` (the template set's), else the
    item's behaviour instruction; a ValueError names the items that have neither."""
    missing = [item.id for item in items if not (prompt_baseline or item.instruction)]
    if missing:
        raise L2SInputError(
            f"method='prompt' has no instruction for sample(s) {missing[:3]}: the template set defines no "
            "prompt_baseline and their behaviour no instruction"
        )
    return [prompt_baseline or item.instruction for item in items]


def render_prompt(loaded: PromptCoder, question: str, has_image: bool, instruction: str = "") -> str:
    """The prompt text X, ending with the chat template's generation prompt (assistant turn opened)."""
    messages = [user_message(question, has_image, instruction)]
    if loaded.processor is None and has_image:
        raise L2SInputError(f"model {loaded.spec.display_name} is text-only but a sample has an image")
    return _templater(loaded).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def assistant_turn_suffix(loaded: PromptCoder) -> str:
    """The text the chat template puts after an assistant answer (e.g. ``<|im_end|>\\n``)."""
    return _turn_suffix(id(loaded), _templater(loaded))


@lru_cache(maxsize=8)
def _turn_suffix(_key: int, templater: Any) -> str:
    marker = "L2SANSWERMARKER"
    messages = [{"role": "user", "content": "Hi"}]
    prompt = templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = templater.apply_chat_template(
        messages + [{"role": "assistant", "content": marker}], add_generation_prompt=False, tokenize=False
    )
    if not full.startswith(prompt + marker):
        return ""
    return full[len(prompt) + len(marker) :]


def _add_special_tokens(tokenizer: Any, text: str) -> bool:
    """Templates that already write the BOS token must not get a second one from the tokenizer."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def encode_prompts(
    loaded: PromptCoder, texts: Sequence[str], images: Sequence[Image.Image | None]
) -> dict[str, torch.Tensor]:
    """Left-padded encodings of rendered prompts (with pixel values etc. for MLLMs)."""
    add_special = _add_special_tokens(loaded.tokenizer, texts[0])
    present = [image for image in images if image is not None]
    if present and len(present) != len(images):
        raise L2SInputError("a batch mixes samples with and without images; keep them in separate runs")
    if loaded.processor is None:
        encoded = loaded.tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=add_special)
    else:
        kwargs: dict[str, Any] = {
            "text": list(texts),
            "padding": True,
            "return_tensors": "pt",
            "add_special_tokens": add_special,
        }
        if present:
            kwargs["images"] = list(present)
        encoded = loaded.processor(**kwargs)
    return dict(encoded)


def left_pad(rows: Sequence[Sequence[int] | torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded to one (B, W) tensor, and its attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def right_pad(rows: Sequence[Sequence[int] | torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded to one (B, W) tensor, and their lengths (B,)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return ids, torch.tensor([len(row) for row in rows], dtype=torch.long)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (0 where it has none: padded positions are masked out anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode_completions(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids of completions (no special tokens added) and their lengths; a ValueError names
    a completion that encodes to no tokens."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    for text, row in zip(texts, ids):
        if not row:
            raise L2SInputError(f"completion {text!r} encodes to no tokens")
    return right_pad(ids, pad_token_id(tokenizer))


PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
"""Encoded-input fields with one value per token (the last two: token types, 0 for text)."""


def append_tokens(
    inputs: dict[str, torch.Tensor] | Any, ids: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``inputs`` (B, W) followed by token ``ids`` (B, C) whose attention ``mask`` (B, C; default all ones) marks
    the real ones: ids and mask concatenated, token types extended with text (0)."""
    attention = inputs["attention_mask"]
    mask = torch.ones_like(ids) if mask is None else mask
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], ids.to(attention.device)], dim=1)
    out["attention_mask"] = torch.cat([attention, mask.to(attention.device, attention.dtype)], dim=1)
    for key in PER_TOKEN_KEYS[2:]:
        if key in inputs:
            out[key] = torch.cat([inputs[key], inputs[key].new_zeros(inputs[key].shape[0], ids.shape[1])], dim=1)
    return out
