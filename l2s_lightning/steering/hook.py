"""A per-sample additive steering hook on one decoder block: h_L*[i, t] += α_i · v_i.

Prefill vs decode: transformers runs the prompt in one call (the prefill, sequence length > 1) and then one
call per generated token. The first call after the hook is armed, and any later call with more than one
token, is a prefill; every other call carries a generated token. (Assumption: no chunked prefill; a
one-token prompt is recognised only as the first call.) The decision uses static facts (a Python flag and
the sequence length), so the compiled static-cache decode step traces once, with no graph break per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

from l2s_lightning.models.layers import decoder_layers, hidden_size, layer_output, replace_layer_output

Positions = Literal["generated", "last_prompt_and_generated", "all"]
POSITIONS: tuple[str, ...] = ("generated", "last_prompt_and_generated", "all")


def _check_alpha(alpha: float | torch.Tensor) -> None:
    value = torch.as_tensor(alpha, dtype=torch.float32)
    if not torch.isfinite(value).all():
        raise ValueError(f"alpha={alpha!r} must be finite")


class SteeringHook:
    """Adds ``alpha * vectors[i]`` to row i of a block's output at the positions chosen by ``mode``.

    ``vectors`` may be None at construction and supplied later by ``provider`` (a callable returning the
    (B, D) vectors, called at the first call that needs them after each prefill): that is how the context
    h of L2S, read at the prefill, becomes a vector before the first generated token.
    """

    def __init__(
        self,
        vectors: torch.Tensor | None,
        alpha: float | torch.Tensor = 1.0,
        mode: Positions = "generated",
        provider: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        if mode not in POSITIONS:
            raise ValueError(f"mode={mode!r} must be one of {POSITIONS}")
        _check_alpha(alpha)
        if vectors is None and provider is None:
            raise ValueError("give the vectors or a provider of them")
        self.mode = mode
        self.alpha = alpha
        self.vectors = vectors
        self.provider = provider
        self.awaiting_prefill = True
        self._delta: torch.Tensor | None = None

    def reset(self) -> None:
        """Treat the next call as a prefill again (a new generate call)."""
        self.awaiting_prefill = True
        self._delta = None

    def _delta_for(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._delta is None or self._delta.device != hidden.device or self._delta.dtype != hidden.dtype:
            vectors = self.vectors if self.provider is None else self.provider()
            alpha = torch.as_tensor(self.alpha, dtype=torch.float32, device=vectors.device)
            delta = (alpha.reshape(-1, 1) * vectors.float()) if alpha.dim() else alpha * vectors.float()
            self._delta = delta.to(device=hidden.device, dtype=hidden.dtype)
        delta = self._delta
        if delta.shape[0] != hidden.shape[0]:  # num_return_sequences / beams expand the batch
            if hidden.shape[0] % delta.shape[0]:
                raise ValueError(f"{delta.shape[0]} steering vectors for a batch of {hidden.shape[0]} rows")
            delta = delta.repeat_interleave(hidden.shape[0] // delta.shape[0], dim=0)
        return delta

    def __call__(self, module: nn.Module, args: tuple, output: object) -> object:
        hidden = layer_output(output)
        prefill = self.awaiting_prefill or hidden.shape[1] > 1
        if prefill:
            self.awaiting_prefill = False
            if self.provider is not None:
                self._delta = None  # a new prompt: the provider's vectors change
            if self.mode == "generated":
                return output
            if self.mode == "last_prompt_and_generated":
                delta = self._delta_for(hidden)
                steered = torch.cat([hidden[:, :-1], hidden[:, -1:] + delta[:, None, :]], dim=1)
                return replace_layer_output(output, steered)
        return replace_layer_output(output, hidden + self._delta_for(hidden)[:, None, :])


@contextlib.contextmanager
def register_hook(model: nn.Module, layer: int, hook: Callable) -> Iterator[None]:
    """A forward hook on decoder block ``layer`` that is always removed on exit."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range: the model has {len(layers)} decoder layers")
    handle = layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def add_steering(
    model: nn.Module,
    layer: int,
    vectors: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    mode: Positions = "generated",
) -> Iterator[SteeringHook]:
    """Steer block ``layer`` of ``model`` by ``alpha * vectors[i]`` for row i while the context is open.

    ``vectors``: (B, D), one row per batch row (zero rows leave their row unchanged); ``alpha``: a number or
    (B,) tensor. Several generate calls may run inside the context (each prompt longer than one token is
    recognised as a new prefill)."""
    if vectors.shape[-1] != hidden_size(model):
        raise ValueError(f"steering vectors have size {vectors.shape[-1]}, the model's hidden size is {hidden_size(model)}")
    hook = SteeringHook(vectors, alpha, mode)
    with register_hook(model, layer, hook):
        yield hook
