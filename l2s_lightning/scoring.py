"""Behaviour log-odds: log p(desired continuation) - log p(undesired continuation) under teacher forcing.

A sensitive, cheap measure of steering (one forward per continuation, no free generation). The vector is added
by the steering hook of ``l2s predict`` (:func:`~l2s_lightning.steering.add_steering`: its layer, α and vector
checks and its compile guard) with the positions rule :data:`SCORING_POSITIONS`: from the prompt's last token
on, where it acts when the model starts answering, the continuation's tokens steered as generated tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from l2s_lightning.data.items import PromptItem
from l2s_lightning.errors import L2SInputError
from l2s_lightning.models.loading import LoadedModel
from l2s_lightning.prompts import append_tokens, encode_completions, encode_prompts, render_prompt
from l2s_lightning.steering import Positions, add_steering, check_steerer, steerer_vectors
from l2s_lightning.templates import TemplateSet

SCORING_POSITIONS: Positions = "last_prompt_and_generated"
"""Where scoring adds the vector: the last prompt token and the continuation (as ``l2s predict --model.positions
last_prompt_and_generated`` does at generation)."""


def append_continuations(
    prompts: dict[str, torch.Tensor], continuations: torch.Tensor, lengths: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Model inputs of left-padded ``prompts`` (B, W) followed by right-padded ``continuations`` (B, C) of
    ``lengths`` (B,): ids, attention mask and per-token type ids extended, and position ids counting real tokens
    (none for image grids: the model computes its own)."""
    device = prompts["attention_mask"].device
    cont_mask = torch.arange(continuations.shape[1], device=device)[None] < lengths[:, None].to(device)
    inputs = append_tokens(prompts, continuations, cont_mask)
    if "image_grid_thw" not in inputs:
        inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return inputs


@torch.no_grad()
def continuation_logprobs(
    loaded: LoadedModel, prompts: dict[str, torch.Tensor], continuations: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Summed log-probability of each row's continuation after its (left-padded) prompt (one forward)."""
    width = prompts["input_ids"].shape[1]
    inputs = append_continuations(prompts, continuations, lengths)
    logits = loaded.model(**inputs, use_cache=False).logits[:, width - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, continuations.to(logits.device)[..., None])[..., 0]
    real = torch.arange(continuations.shape[1], device=logp.device)[None] < lengths.to(logp.device)[:, None]
    return (logp * real.to(logp.dtype)).sum(dim=1)


def behaviour_log_odds(
    loaded: LoadedModel,
    items: Sequence[PromptItem],
    eval_templates: TemplateSet,
    vectors: torch.Tensor | None = None,
    layer_steer: int | None = None,
    instructions: Sequence[str] | None = None,
    alpha: float | torch.Tensor = 1.0,
    steer_tokens: int | None = None,
) -> torch.Tensor:
    """Per item: log p(positive) - log p(negative) of the eval template of its category, with ``alpha *
    vectors`` (B, D) (None: unsteered) added at block ``layer_steer`` at :data:`SCORING_POSITIONS` (up to the
    position producing continuation token ``steer_tokens``, as generation steers), and ``instructions`` (one per
    item, the prompt baseline) before the questions."""
    if vectors is not None and layer_steer is None:
        raise L2SInputError("behaviour_log_odds: layer_steer is needed with vectors")
    instructions = instructions or [""] * len(items)
    prompts = [
        render_prompt(loaded, item.question, item.image is not None, text) for item, text in zip(items, instructions)
    ]
    encoded = encode_prompts(loaded, prompts, [item.image for item in items])
    device = next(loaded.model.parameters()).device
    encoded = {k: v.to(device) for k, v in encoded.items()}
    contrasts = [eval_templates.resolve(item.category, item.id) for item in items]
    steering: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if vectors is not None:
        assert layer_steer is not None
        width = encoded["input_ids"].shape[1]
        steering = add_steering(
            loaded.model, layer_steer, vectors, alpha, SCORING_POSITIONS, prompt_width=width, steer_tokens=steer_tokens
        )
    scores = []
    with steering:
        for side in ("positive", "negative"):
            ids, lengths = encode_completions(loaded.tokenizer, [getattr(c, side) for c in contrasts])
            scores.append(continuation_logprobs(loaded, encoded, ids.to(device), lengths.to(device)))
    return (scores[0] - scores[1]).cpu()


def steerer_log_odds(
    loaded: LoadedModel,
    items: Sequence[PromptItem],
    eval_templates: TemplateSet,
    steerer: Any,
    context: torch.Tensor,
    alpha: float | torch.Tensor | None = None,
    steer_tokens: int | None = None,
) -> torch.Tensor:
    """:func:`behaviour_log_odds` steered by ``steerer`` at ``alpha`` (None: its ``default_alpha``), up to
    ``steer_tokens`` continuation tokens (None: all), from
    contexts ``context`` (B, D) (h at L' of the items' prompts, e.g. read from features.h5): the per-row vectors
    that ``attach_steerer`` adds for the same h, behaviours and sample ids, after the same checks."""
    behaviours, sample_ids = [item.behaviour for item in items], [item.id for item in items]
    check_steerer(steerer, loaded.model, behaviours, sample_ids)
    vectors = steerer_vectors(steerer, context, behaviours, sample_ids)
    alpha = steerer.default_alpha if alpha is None else alpha
    return behaviour_log_odds(
        loaded, items, eval_templates, vectors, steerer.layer_steer, alpha=alpha, steer_tokens=steer_tokens
    )


def batched_log_odds(
    loaded: LoadedModel,
    items: Sequence[PromptItem],
    eval_templates: TemplateSet,
    steerer: Any = None,
    context: torch.Tensor | None = None,
    alpha: float | torch.Tensor | None = None,
    steer_tokens: int | None = None,
    instructions: Sequence[str] | None = None,
    batch_size: int = 16,
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Per item, in batches of ``batch_size`` items: :func:`steerer_log_odds` from ``context`` (N, D) with a
    ``steerer``, else :func:`behaviour_log_odds` after ``instructions`` (one per item, or None); ``advance(n)``
    after each batch of n items (e.g. a :func:`l2s_lightning.quiet.progress` bar's)."""
    if steerer is not None and context is None:
        raise L2SInputError("batched_log_odds: a steerer needs the contexts of the items")
    scores = []
    for start in range(0, len(items), batch_size):
        stop = start + batch_size
        batch = items[start:stop]
        if steerer is not None:
            assert context is not None
            scores.append(
                steerer_log_odds(loaded, batch, eval_templates, steerer, context[start:stop], alpha, steer_tokens)
            )
        else:
            prompt = list(instructions[start:stop]) if instructions is not None else None
            scores.append(behaviour_log_odds(loaded, batch, eval_templates, instructions=prompt))
        if advance is not None:
            advance(len(batch))
    return torch.cat(scores) if scores else torch.zeros(0)
