"""Behaviour log-odds: log p(desired continuation) - log p(undesired continuation) under teacher forcing.

A sensitive, cheap measure of steering (one forward per continuation, no free generation): the vector is
added at layer L* from the prompt's last token on, exactly where it acts when the model starts answering.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from l2s_lightning.data.datamodule import PromptItem
from l2s_lightning.models.layers import decoder_layers, layer_output, replace_layer_output
from l2s_lightning.models.loading import LoadedModel
from l2s_lightning.prompts import encode_completions, encode_prompts, render_prompt
from l2s_lightning.templates import TemplateSet


@contextlib.contextmanager
def add_from_position(model: nn.Module, layer: int, vectors: torch.Tensor, start: int) -> Iterator[None]:
    """Add ``vectors[i]`` to row i of block ``layer``'s output at every position >= ``start`` (one forward)."""

    def hook(_module, _args, output):
        hidden = layer_output(output)
        mask = (torch.arange(hidden.shape[1], device=hidden.device) >= start).to(hidden.dtype)
        delta = mask[None, :, None] * vectors.to(hidden.dtype)[:, None, :]
        return replace_layer_output(output, hidden + delta)

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def continuation_logprobs(
    loaded: LoadedModel, prompts: dict[str, torch.Tensor], continuations: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Summed log-probability of each row's continuation after its (left-padded) prompt."""
    model = loaded.model
    mask = prompts["attention_mask"]
    width = continuations.shape[1]
    cont_mask = (torch.arange(width, device=mask.device)[None] < lengths[:, None]).to(mask.dtype)
    inputs = dict(prompts)
    inputs["input_ids"] = torch.cat([prompts["input_ids"], continuations.to(mask.device)], dim=1)
    inputs["attention_mask"] = torch.cat([mask, cont_mask], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], inputs[key].new_zeros(inputs[key].shape[0], width)], dim=1)
    positions = inputs["attention_mask"].long().cumsum(-1) - 1
    kwargs = {} if "image_grid_thw" in inputs else {"position_ids": positions.clamp(min=0)}
    logits = model(**inputs, **kwargs, use_cache=False).logits[:, mask.shape[1] - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, continuations.to(logits.device)[..., None])[..., 0]
    return (logp * cont_mask.to(logp.dtype)).sum(dim=1)


def behaviour_log_odds(
    loaded: LoadedModel,
    items: Sequence[PromptItem],
    eval_templates: TemplateSet,
    vectors: torch.Tensor | None = None,
    layer_steer: int | None = None,
    instructions: Sequence[str] | None = None,
) -> torch.Tensor:
    """Per item: log p(positive) - log p(negative) of the eval template of its category, with ``vectors``
    (already scaled by α; None = unsteered) added at ``layer_steer`` from the last prompt token on, and
    ``instructions`` (one per item, the prompt baseline) before the questions."""
    instructions = instructions or [""] * len(items)
    prompts = [
        render_prompt(loaded, item.question, item.image is not None, text) for item, text in zip(items, instructions)
    ]
    encoded = encode_prompts(loaded, prompts, [item.image for item in items])
    device = next(loaded.model.parameters()).device
    encoded = {k: v.to(device) for k, v in encoded.items()}
    contrasts = [eval_templates.resolve(item.category, item.id) for item in items]
    scores = []
    for side in ("positive", "negative"):
        ids, lengths = encode_completions(loaded.tokenizer, [getattr(c, side) for c in contrasts])
        steering = contextlib.nullcontext()
        if vectors is not None:
            assert layer_steer is not None, "layer_steer is needed with vectors"
            steering = add_from_position(
                loaded.model, layer_steer, vectors.to(device), encoded["input_ids"].shape[1] - 1
            )
        with steering:
            scores.append(continuation_logprobs(loaded, encoded, ids.to(device), lengths.to(device)))
    return (scores[0] - scores[1]).cpu()
