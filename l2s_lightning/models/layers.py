"""The one place that knows where each model family keeps its decoder layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from l2s_lightning.errors import L2SInputError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers LLM or MLLM, in order.

    Works for LLaVA / Qwen2-VL / Qwen2.5-VL (``model.model.language_model.layers``), text-only
    Llama-style models (``model.model.layers``) and older layouts.
    """
    candidates = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        with contextlib.suppress(Exception):
            candidates.append(get_decoder())
    base = getattr(model, "model", None)
    candidates += [
        getattr(base, "language_model", None),
        base,
        getattr(getattr(model, "language_model", None), "model", None),
        getattr(model, "language_model", None),
        model,
    ]
    for module in candidates:
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise L2SInputError(
        f"cannot find the decoder layers of {type(model).__name__}: expected `.get_decoder().layers`, "
        "`.model.language_model.layers` or `.model.layers`"
    )


def decoder_module(model: nn.Module) -> nn.Module:
    """The module that owns :func:`decoder_layers` (its ``config`` holds ``num_hidden_layers``)."""
    layers = decoder_layers(model)
    for module in model.modules():
        if getattr(module, "layers", None) is layers:
            return module
    raise L2SInputError(f"cannot find the module holding the decoder layers of {type(model).__name__}")


def text_config(model_or_config: object):
    """The language-model part of a model's (or a config's) config; the config itself for text-only models."""
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def num_decoder_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    """Width of the residual stream of the language model."""
    return int(text_config(model).hidden_size)


def validate_layers(model: nn.Module, model_name: str = "", **layers: int) -> None:
    """Raise a ValueError naming the field if any layer index is outside ``[0, num_layers)``."""
    n = num_decoder_layers(model)
    for field, index in layers.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise L2SInputError(f"{field}={index!r} must be an integer layer index")
        if not 0 <= index < n:
            raise L2SInputError(
                f"{field}={index} is out of range: model {model_name or type(model).__name__} has {n} "
                f"decoder layers (valid indices 0..{n - 1}; layer L is the output of decoder block L)"
            )


def layer_output(output: object) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor in transformers 5.x, a tuple in 4.x)."""
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[return-value]


def replace_layer_output(output: object, hidden: torch.Tensor) -> object:
    """A decoder layer output of the same structure with its hidden state replaced by ``hidden``."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


@contextlib.contextmanager
def truncated_decoder(model: nn.Module, n_layers: int) -> Iterator[None]:
    """Run only the first ``n_layers`` decoder blocks inside the block (restored afterwards, even on error).

    The final norm still runs on the truncated output; callers read layer outputs with hooks.
    """
    owner = decoder_module(model)
    layers = owner.layers
    if not 0 < n_layers <= len(layers):
        raise L2SInputError(f"n_layers={n_layers} must be in 1..{len(layers)}")
    configs = {id(c): c for c in (getattr(owner, "config", None), text_config(model)) if c is not None}
    saved = {key: (c, c.num_hidden_layers, getattr(c, "layer_types", None)) for key, c in configs.items()}
    owner.layers = nn.ModuleList(list(layers)[:n_layers])
    for c, _, layer_types in saved.values():
        c.num_hidden_layers = n_layers
    try:
        yield
    finally:
        owner.layers = layers
        for c, n, layer_types in saved.values():
            c.num_hidden_layers = n
            if layer_types is not None:
                c.layer_types = layer_types
