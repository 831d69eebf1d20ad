"""The Python API: a steerer trained on a Hugging Face model already in memory, in one call.

    steerer = train_steerer(model, tokenizer, [(prompt, positive, negative), ...], layer=12)
    with steerer.attach(model, alpha=4.0):
        model.generate(**inputs)

h and z come from ``ExtractionModule.features`` (the P2S forward of ``l2s extract``, chat template included),
written to a temporary features.h5; ``mean`` / ``random`` are then built by ``build_baseline`` over every example
and ``l2s`` is trained by the fit stage of ``l2s fit`` (``stages.fit.run``). A vector of one's own becomes a
steerer with :meth:`Steerer.from_vector <l2s_lightning.steerer.Steerer.from_vector>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from l2s_lightning.config import build_dataclass
from l2s_lightning.data.items import PromptItem
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.forward import Readout
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.features import write_features
from l2s_lightning.models.layers import check_layer_range, num_decoder_layers, set_decoder_layers
from l2s_lightning.models.loading import LoadedModel, ModelSpec
from l2s_lightning.quiet import quiet_output
from l2s_lightning.stages import fit
from l2s_lightning.steerer import Steerer
from l2s_lightning.training.baselines import build_baseline

ApiMethod = Literal["l2s", "mean", "random"]
API_METHODS: tuple[str, ...] = ("l2s", "mean", "random")
"""The methods :func:`train_steerer` makes (the others need behaviours or a test split)."""
FIELDS = ("prompt", "positive", "negative")
ALIASES = {"positive": "positive_completion", "negative": "negative_completion"}
"""Also accepted as the keys of a mapping example."""


@dataclass(frozen=True)
class Example:
    """One training example: a prompt and the completions that show (positive) and lack (negative) the behaviour."""

    prompt: str
    positive: str
    negative: str


def as_items(examples: Sequence[Any]) -> list[PromptItem]:
    """``examples`` ((prompt, positive, negative) tuples, mappings with those keys, or :class:`Example`s) as
    prompt rows ``example<i>``; an L2SInputError names the example and field at fault."""
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence) or not examples:
        raise L2SInputError("examples must be a non-empty list of (prompt, positive, negative)")
    items = []
    for i, example in enumerate(examples):
        values = _fields(example, i)
        for name, value in zip(FIELDS, values):
            if not isinstance(value, str):
                raise L2SInputError(f"examples[{i}].{name} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise L2SInputError(f"examples[{i}].{name} is empty")
        prompt, positive, negative = values
        items.append(
            PromptItem(
                id=f"example{i}",
                question=prompt,
                category="custom",
                behaviour="custom",
                positive=positive,
                negative=negative,
                suffix="",
                close_turn=False,
                instruction="",
                split="train",
                benchmark="api",
            )
        )
    return items


def _fields(example: Any, index: int) -> tuple[Any, ...]:
    """(prompt, positive, negative) of one example."""
    if isinstance(example, Mapping):
        keys = {name: next((k for k in (name, ALIASES.get(name)) if k in example), None) for name in FIELDS}
        missing = [name for name, key in keys.items() if key is None]
        if missing:
            raise L2SInputError(f"examples[{index}] has no {missing} (keys: prompt, positive, negative)")
        return tuple(example[key] for key in keys.values())
    if isinstance(example, (tuple, list)):
        if len(example) != 3:
            raise L2SInputError(f"examples[{index}] has {len(example)} items; expected (prompt, positive, negative)")
        return tuple(example)
    if all(hasattr(example, name) for name in FIELDS):
        return tuple(getattr(example, name) for name in FIELDS)
    raise L2SInputError(
        f"examples[{index}] is a {type(example).__name__}; expected (prompt, positive, negative) or a mapping "
        "with those keys"
    )


@contextlib.contextmanager
def _ready_for_extraction(model: nn.Module, tokenizer: Any) -> Iterator[None]:
    """The model in eval mode and the tokenizer left-padding (with EOS as its pad token where it has none), as
    ``load_model`` leaves them; both restored afterwards."""
    training, side, pad = model.training, tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        model.train(training)
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


@contextlib.contextmanager
def _silenced(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: Lightning's info lines and the fit's report (stderr) not shown while the block runs."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def _deterministic_flags_kept() -> Iterator[None]:
    """Restore torch's deterministic-algorithms setting, which the fit's ``Trainer(deterministic=True)`` turns on."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def extract(
    loaded: LoadedModel,
    items: list[PromptItem],
    layer: int,
    context_layer: int,
    z_readout: Readout = "last",
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h at ``context_layer``, z at ``layer``) of every item, each (N, D) float32 on the CPU, by
    ``ExtractionModule.features`` in batches of ``batch_size``."""
    module = ExtractionModule.of_loaded(loaded, layer, context_layer, z_readout)
    contexts, steers = [], []
    with _ready_for_extraction(loaded.model, loaded.tokenizer):
        for start in range(0, len(items), batch_size):
            h, z = module.features(items[start : start + batch_size])
            contexts.append(h.cpu())
            steers.append(z.cpu())
    return torch.cat(contexts), torch.cat(steers)


def train_steerer(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Any],
    layer: int,
    method: ApiMethod = "l2s",
    context_layer: int | None = None,
    *,
    alpha: float = 1.0,
    seed: int = 0,
    epochs: int = 100,
    settings: Mapping[str, Any] | None = None,
    val_fraction: float = 0.1,
    z_readout: Readout = "last",
    batch_size: int = 8,
    processor: Any = None,
    layers_path: str | None = None,
    model_name: str | None = None,
    verbose: bool = False,
) -> Steerer:
    """A steerer of ``model`` trained on ``examples`` (see :func:`as_items`), steering block ``layer`` (L*).

    ``method``: ``l2s`` (g(h) with h read at ``context_layer`` L', default ``layer``; trained as ``l2s fit``
    does, ``val_fraction`` of the examples, at least one, held out for validation; ``settings``: fields of
    ``stages.fit.L2SSettings`` such as ``lr`` or ``hidden``; ``epochs`` epochs), ``mean`` (the mean z of every
    example) or ``random`` (a ``seed``-ed direction of mean ‖z‖). Each prompt goes through the chat template of
    ``processor`` (multimodal models) or ``tokenizer``. ``alpha``: the steerer's ``default_alpha``.
    ``layers_path``: the dotted path of the decoder blocks (``set_decoder_layers``) for a layout not known.
    ``seed`` seeds every generator (``seed_everything``) for ``l2s``. ``verbose``: show the fit's report.
    """
    if layers_path is not None:
        set_decoder_layers(model, layers_path)
    context_layer = layer if context_layer is None else context_layer
    name = model_name or str(getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__)
    check_layer_range(num_decoder_layers(model), name, {"layer": layer, "context_layer": context_layer})
    if method not in API_METHODS:
        raise L2SInputError(f"method={method!r} must be one of {API_METHODS}")
    items = as_items(examples)
    if method == "l2s" and len(items) < 2:
        raise L2SInputError("method='l2s' needs at least 2 examples (one is held out for validation); got 1")
    l2s_settings = build_dataclass(fit.L2SSettings, dict(settings or {}), "train_steerer(settings=)")
    templater = processor if processor is not None else tokenizer
    if not getattr(templater, "chat_template", None):
        raise L2SInputError(
            f"{type(templater).__name__} has no chat template: each prompt goes through it as in `l2s extract` "
            "(set its chat_template)"
        )
    loaded = LoadedModel(model, processor, tokenizer, ModelSpec(name), is_multimodal=processor is not None)
    h, z = extract(loaded, items, layer, context_layer, z_readout, batch_size)
    with tempfile.TemporaryDirectory(prefix="l2s_api_") as folder:
        features = write_features(
            Path(folder) / "features.h5",
            h,
            z,
            sample_id=[item.id for item in items],
            category=[item.category for item in items],
            behaviour=[item.behaviour for item in items],
            split=[item.split for item in items],
            model=name,
            layer_steer=layer,
            layer_context=context_layer,
            num_layers=num_decoder_layers(model),
            z_readout=z_readout,
        )
        if method != "l2s":
            steerer = build_baseline(method, str(features), seed, default_alpha=alpha)
        else:
            cfg = fit.FitConfig(
                data=fit.FeatureDataSettings(
                    features=str(features), val_fraction=max(val_fraction, 1 / len(items)), seed=seed
                ),
                model=l2s_settings,
                method="l2s",
                out_dir=str(Path(folder) / "fit"),
                default_alpha=alpha,
                trainer={
                    **fit.FIT_TRAINER_DEFAULTS,
                    "max_epochs": epochs,
                    "logger": False,
                    "enable_progress_bar": False,
                },
                seed_everything=seed,
            )
            with quiet_output(), _silenced(verbose), _deterministic_flags_kept():
                steerer = fit.run(cfg).steerers["l2s"]
    return dataclasses.replace(steerer, features="")  # the features file was temporary


__all__ = ["API_METHODS", "Example", "Steerer", "as_items", "extract", "train_steerer"]
