"""The one place that knows where each model family keeps its decoder layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import nn

from l2s_lightning.errors import L2SInputError
from l2s_lightning.internals import layer_output, replace_layer_output, truncated_layers

__all__ = [  # layer_output, replace_layer_output: re-exported from l2s_lightning.internals
    "check_layer_range",
    "decoder_layers",
    "decoder_location",
    "decoder_module",
    "hidden_size",
    "layer_output",
    "num_decoder_layers",
    "replace_layer_output",
    "set_decoder_layers",
    "text_config",
    "truncated_decoder",
    "validate_layers",
]


LAYERS_PATH_ATTR = "l2s_decoder_layers"
"""The attribute :func:`set_decoder_layers` sets on a model: the dotted path of its decoder blocks."""
LAYER_LIST_NAMES = ("layers", "h")
"""Names a decoder keeps its blocks under: ``layers`` (Llama, Qwen, LLaVA, ...), ``h`` (GPT-2, GPT-J, Falcon, ...)."""


def set_decoder_layers(model: nn.Module, path: str) -> None:
    """Name where ``model`` keeps its decoder blocks, for a layout :func:`decoder_layers` does not know: ``path``
    is the dotted path of an ``nn.ModuleList`` inside ``model`` (e.g. ``"transformer.h"``). Every extraction and
    steering function then uses it."""
    _resolve_path(model, path)
    setattr(model, LAYERS_PATH_ATTR, path)


def _resolve_path(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """(owner, attribute) of the module list at dotted ``path``; an L2SInputError when there is none."""
    owner_path, _, name = path.rpartition(".")
    try:
        owner = model.get_submodule(owner_path) if owner_path else model
    except AttributeError:
        owner = None
    layers = getattr(owner, name, None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise L2SInputError(
            f"decoder layers path {path!r} of {type(model).__name__} is not a non-empty nn.ModuleList "
            "(give the dotted path of the decoder blocks, e.g. 'transformer.h' or 'model.layers')"
        )
    return owner, name  # type: ignore[return-value]  # owner is a module when layers were found in it


def decoder_location(model: nn.Module) -> tuple[nn.Module, str]:
    """(owner, attribute): the module holding the decoder blocks and the name of their ``nn.ModuleList``.

    The path named by :func:`set_decoder_layers` when there is one; else the first non-empty ``layers`` / ``h``
    list of ``model.get_decoder()``, ``model.model.language_model`` (LLaVA / Qwen2-VL / Qwen2.5-VL),
    ``model.model`` (Llama-style), ``model.transformer`` (GPT-2-style) or ``model`` itself.
    """
    path = getattr(model, LAYERS_PATH_ATTR, None)
    if isinstance(path, str):
        return _resolve_path(model, path)
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
        getattr(model, "transformer", None),
        model,
    ]
    for module in candidates:
        for name in LAYER_LIST_NAMES:
            layers = getattr(module, name, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return module, name
    raise L2SInputError(
        f"cannot find the decoder layers of {type(model).__name__}: expected `.get_decoder().layers`, "
        "`.model.language_model.layers`, `.model.layers` or `.transformer.h`; name them with "
        "l2s_lightning.models.layers.set_decoder_layers(model, 'dotted.path.to.blocks')"
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers LLM or MLLM, in order (where: :func:`decoder_location`)."""
    owner, name = decoder_location(model)
    return getattr(owner, name)


def decoder_module(model: nn.Module) -> nn.Module:
    """The module that owns :func:`decoder_layers` (its ``config`` holds ``num_hidden_layers``)."""
    return decoder_location(model)[0]


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


LAYER_RANGE_MESSAGE = (
    "{field}={index} is out of range: model {model} has {n} decoder layers "
    "(valid indices 0..{last}; layer L is the output of decoder block L)"
)


def check_layer_range(
    n_layers: int, model_name: str, layers: Mapping[str, object], message: str = LAYER_RANGE_MESSAGE
) -> None:
    """Raise an :class:`L2SInputError` naming the field if any of ``layers`` (field: index) is not an integer in
    ``[0, n_layers)``. ``message``: the out-of-range message, formatted with ``field``, ``index``, ``model``,
    ``n`` and ``last``."""
    for field, index in layers.items():
        if not isinstance(index, int) or isinstance(index, bool):
            raise L2SInputError(f"{field}={index!r} must be an integer layer index")
        if not 0 <= index < n_layers:
            raise L2SInputError(
                message.format(field=field, index=index, model=model_name, n=n_layers, last=n_layers - 1)
            )


def validate_layers(model: nn.Module, model_name: str = "", **layers: int) -> None:
    """Raise a ValueError naming the field if any layer index is outside ``[0, num_layers)``."""
    check_layer_range(num_decoder_layers(model), model_name or type(model).__name__, layers)


@contextlib.contextmanager
def truncated_decoder(model: nn.Module, n_layers: int) -> Iterator[None]:
    """Run only the first ``n_layers`` decoder blocks inside the block (restored afterwards, even on error).

    The final norm still runs on the truncated output; callers read layer outputs with hooks.
    """
    n = num_decoder_layers(model)
    if not 0 < n_layers <= n:
        raise L2SInputError(f"n_layers={n_layers} must be in 1..{n}")
    owner, name = decoder_location(model)
    configs = {id(c): c for c in (getattr(owner, "config", None), text_config(model)) if c is not None}
    with truncated_layers(owner, list(configs.values()), n_layers, name):
        yield
