"""`attach_steerer`: apply a steerer inside your own generation loop.

    with steerer.attach(model, alpha=2.0):
        model.generate(**inputs)

At every prefill a hook on block L' keeps h = the last prompt token's hidden state; the vector
v = steerer.vectors(h) is computed once per prompt, and α·v is added at block L* (generated tokens only by
default). Both hooks are removed when the block exits, even after an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from l2s_lightning.models.layers import hidden_size, layer_output, validate_layers
from l2s_lightning.steering.hook import Positions, SteeringHook, _check_alpha, register_hook


class _ContextCapture:
    """Keeps the last-position hidden state of block L' from each prefill call."""

    def __init__(self) -> None:
        self.context: torch.Tensor | None = None
        self.awaiting_prefill = True

    def __call__(self, module: nn.Module, args: tuple, output: object) -> None:
        hidden = layer_output(output)
        if self.awaiting_prefill or hidden.shape[1] > 1:
            self.awaiting_prefill = False
            self.context = hidden[:, -1].detach()


@contextlib.contextmanager
def attach_steerer(
    steerer: Any,
    model: nn.Module,
    alpha: float | None = None,
    mode: Positions = "generated",
    behaviours: Sequence[str] | None = None,
    sample_ids: Sequence[str] | None = None,
) -> Iterator[SteeringHook]:
    """Steer ``model`` with ``steerer`` (L2S or a baseline) while the context is open; see the module doc."""
    alpha = steerer.default_alpha if alpha is None else alpha
    _check_alpha(alpha)
    if hidden_size(model) != steerer.hidden_size:
        raise ValueError(f"steerer hidden size {steerer.hidden_size} does not fit the model's {hidden_size(model)}")
    validate_layers(model, layer_steer=steerer.layer_steer, layer_context=steerer.layer_context)
    needs_context = bool(getattr(steerer, "needs_context", True))
    if needs_context and mode != "generated" and steerer.layer_context > steerer.layer_steer:
        raise ValueError(
            f"mode={mode!r} steers the prompt, but L'={steerer.layer_context} comes after L*={steerer.layer_steer}: "
            "the context is not known yet when L* runs; use mode='generated'"
        )
    capture = _ContextCapture()
    behaviours = list(behaviours) if behaviours is not None else None
    sample_ids = list(sample_ids) if sample_ids is not None else None

    def provider() -> torch.Tensor:
        context = capture.context if needs_context else None
        if needs_context and context is None:
            raise RuntimeError("no prefill seen at layer L' before steering")
        with torch.no_grad():
            return steerer.vectors(context, behaviours=behaviours, sample_ids=sample_ids)

    hook = SteeringHook(None, alpha, mode, provider=provider)
    with contextlib.ExitStack() as stack:
        if needs_context:
            stack.enter_context(register_hook(model, steerer.layer_context, capture))
        stack.enter_context(register_hook(model, steerer.layer_steer, hook))
        yield hook
