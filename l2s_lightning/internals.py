"""Every use of a transformers / torch / jsonargparse internal, one function each; ``tests/test_internals.py``
checks each one.

Each docstring names the library behaviour the function relies on. When a new release changes one, its
test says what changed; the fix belongs here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch
from torch import nn

# --- decoder blocks -------------------------------------------------------------------------------------------


def layer_output(output: object) -> torch.Tensor:
    """The hidden-state tensor of a decoder block's output. Relies on: a transformers 5.x decoder block returns
    the hidden state as a tensor (4.x: a tuple whose first item it is)."""
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[return-value]


def replace_layer_output(output: object, hidden: torch.Tensor) -> object:
    """A decoder block output of the same structure with its hidden state replaced by ``hidden`` (a forward hook's
    return value). Relies on the same structure as :func:`layer_output`."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


@contextlib.contextmanager
def truncated_layers(owner: nn.Module, configs: list[Any], n_layers: int, name: str = "layers") -> Iterator[None]:
    """Keep only the first ``n_layers`` of ``owner.<name>`` (``layers``; GPT-2: ``h``) (and set
    ``num_hidden_layers`` of ``configs``) while open; restored afterwards, even on error. Relies on: the decoder's
    ``forward`` runs the blocks of that list (at most ``config.num_hidden_layers`` of them) and its
    ``DynamicCache`` has one layer per block it runs (sized from the config); ``layer_types`` of the configs is
    restored too."""
    layers = cast(nn.ModuleList, getattr(owner, name))
    saved = [(c, c.num_hidden_layers, getattr(c, "layer_types", None)) for c in configs]
    setattr(owner, name, nn.ModuleList(list(layers)[:n_layers]))
    for c, _, _ in saved:
        c.num_hidden_layers = n_layers
    try:
        yield
    finally:
        setattr(owner, name, layers)
        for c, n, layer_types in saved:
            c.num_hidden_layers = n
            if layer_types is not None:
                c.layer_types = layer_types


def rope_position_ids(base: nn.Module, prefix: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The (3, B, P) mRoPE position ids of a Qwen2-VL-style prompt batch; None for a model without
    ``get_rope_index``. Relies on: transformers 5.x ``get_rope_index(input_ids, mm_token_type_ids=,
    image_grid_thw=, video_grid_thw=, attention_mask=)`` returning ``(positions, deltas)``."""
    get_rope_index = getattr(base, "get_rope_index", None)
    if get_rope_index is None:
        return None
    positions, _ = get_rope_index(
        prefix["input_ids"],
        mm_token_type_ids=prefix.get("mm_token_type_ids"),
        image_grid_thw=prefix.get("image_grid_thw"),
        video_grid_thw=prefix.get("video_grid_thw"),
        attention_mask=prefix["attention_mask"],
    )
    return positions


# --- KV cache -------------------------------------------------------------------------------------------------


def cache_kwarg(module: nn.Module) -> str:
    """The name under which ``module.forward`` takes its KV cache. Relies on: recent transformers 5.x call it
    ``cache`` (and return it as ``output.cache``), earlier releases ``past_key_values``."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(module: nn.Module, output: Any) -> Any:
    """The KV cache a forward of ``module`` returned (``output.cache`` or ``output.past_key_values``, as
    :func:`cache_kwarg` names it)."""
    return output.cache if cache_kwarg(module) == "cache" else output.past_key_values


def cache_snapshot(cache: Any) -> list[dict]:
    """The state of each layer of a dynamic KV cache of attention layers (a shallow copy of its attributes).
    Relies on: a ``DynamicCache`` keeps one object per block in the list ``cache.layers``, and a dynamic layer,
    full or sliding-window, replaces its tensors when a pass appends to them and never writes into them, so
    :func:`restore_cache` undoes everything run after this, including what a sliding-window layer evicted and
    its position count. (Layers that update a state in place are not run on a snapshot: see
    ``l2s_lightning.extraction.forward.tail_shares_cache``.)"""
    return [dict(vars(layer)) for layer in cache.layers]


def restore_cache(cache: Any, snapshot: list[dict]) -> None:
    """Put every layer back as :func:`cache_snapshot` found it (layers added since are dropped)."""
    del cache.layers[len(snapshot) :]
    for layer, state in zip(cache.layers, snapshot):
        vars(layer).clear()
        vars(layer).update(state)


def keep_cache_layers(cache: object, n_layers: int) -> None:
    """Drop the KV cache entries of blocks ``n_layers`` and above (not needed by a shallower pass). Relies on:
    ``cache.layers`` is a list, one entry per block, and a cache with fewer layers serves a shallower decoder."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, list) and len(layers) > n_layers:
        del layers[n_layers:]


def repeat_cache_rows(cache: Any, repeats: int) -> None:
    """Repeat each row of a KV cache ``repeats`` times in place (row i becomes rows ``i*repeats ..``). Relies on:
    ``Cache.batch_repeat_interleave`` (used by transformers' beam search)."""
    cache.batch_repeat_interleave(repeats)


# --- compilation ----------------------------------------------------------------------------------------------

# every block instance of one class is its own guard entry in dynamo's cache of that forward's code object
RECOMPILE_LIMITS = (
    "recompile_limit",
    "cache_size_limit",
    "accumulated_recompile_limit",
    "accumulated_cache_size_limit",
)


def compile_on_any_device(config: Any) -> Any:
    """``config`` (a transformers ``CompileConfig``), made to compile ``generate``'s decode step on any device.
    Relies on: the private ``CompileConfig._compile_all_devices`` (``generate`` compiles only on accelerators
    otherwise)."""
    config._compile_all_devices = True
    return config


def raise_recompile_limits(n_blocks: int) -> None:
    """Raise dynamo's recompile limits so ``n_blocks`` compiled block instances fit (process-wide). Relies on:
    ``torch._dynamo.config`` limits named in :data:`RECOMPILE_LIMITS` (whichever the torch release has)."""
    config = torch._dynamo.config
    for name in RECOMPILE_LIMITS:
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 4 * n_blocks + 8))


def is_compiled_function(function: object) -> bool:
    """True for what ``torch.compile`` returned for a function. Relies on: dynamo marks it with
    ``_torchdynamo_orig_callable``."""
    return hasattr(function, "_torchdynamo_orig_callable")


def enable_nnmodule_hook_guards() -> bool:
    """Make compiled graphs check the hooks of modules (``torch._dynamo.config.skip_nnmodule_hook_guards =
    False``, process-wide); True when this changed the flag. Relies on: with the flag True (torch's default) a
    graph compiled while a module had no hooks is reused after one is added."""
    config = torch._dynamo.config
    if not getattr(config, "skip_nnmodule_hook_guards", False):
        return False
    config.skip_nnmodule_hook_guards = False
    return True


def has_compiled_call(model: nn.Module) -> bool:
    """True when ``generate`` compiled the model's forward. Relies on: transformers keeps it in the private
    ``model._compiled_call`` (``PreTrainedModel.get_compiled_call``)."""
    return getattr(model, "_compiled_call", None) is not None


def drop_compiled_graphs() -> None:
    """Forget every graph dynamo compiled (``torch._dynamo.reset()``): they are recompiled when next run."""
    torch._dynamo.reset()


# --- loading --------------------------------------------------------------------------------------------------


def clear_quantization_markers(model: Any) -> None:
    """Unmark a model dequantised from GGUF as quantised, so ``save_pretrained`` writes it as plain weights.
    Relies on: the GGUF loader sets ``model.hf_quantizer``, ``model.is_quantized`` and
    ``config.quantization_config``, and ``save_pretrained`` refuses a model whose ``hf_quantizer`` is not
    serialisable."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def processor_class_name(model_type: str) -> str | None:
    """The processor class transformers maps ``model_type`` to. Relies on:
    ``transformers.models.auto.processing_auto.PROCESSOR_MAPPING_NAMES``."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    return PROCESSOR_MAPPING_NAMES.get(model_type)


def needs_video_processor(processor_class: type) -> bool:
    """Whether a processor class has a ``video_processor`` sub-processor. Relies on:
    ``ProcessorMixin.get_attributes()`` listing the sub-processors."""
    return "video_processor" in processor_class.get_attributes()  # type: ignore[attr-defined]


@functools.cache
def image_only(processor_class: type) -> type:
    """A subclass of a processor class whose sub-processors are the image processor and tokenizer only (cached:
    one subclass per class). Relies on: ``ProcessorMixin`` derives the sub-processors from ``__init__``'s
    signature, and the processor's ``__init__`` takes ``(image_processor, tokenizer, video_processor, ...)``."""

    base: Any = processor_class

    class ImageOnlyProcessor(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
            base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        def __reduce__(self):
            # a class made here cannot be pickled by name: rebuild it from the base class (spawned loader workers,
            # ddp_spawn get the processor pickled)
            return _new_image_only, (processor_class,), self.__dict__.copy()

    ImageOnlyProcessor.__name__ = f"{processor_class.__name__}ImageOnly"
    ImageOnlyProcessor.__qualname__ = ImageOnlyProcessor.__name__
    return ImageOnlyProcessor


def _new_image_only(processor_class: type) -> Any:
    """An empty instance of ``image_only(processor_class)``: unpickling fills its attributes."""
    cls: Any = image_only(processor_class)
    return cls.__new__(cls)


# --- command-line parsing -------------------------------------------------------------------------------------


def is_group_file_option(action: object) -> bool:
    """Whether an argparse action is jsonargparse's ``--<group> FILE`` option (a group's settings read from a YAML
    file of their own). Relies on: jsonargparse adds those options as its private ``_actions._ActionConfigLoad``."""
    from jsonargparse._actions import _ActionConfigLoad

    return isinstance(action, _ActionConfigLoad)


# --- Lightning ------------------------------------------------------------------------------------------------


def set_module_device(module: nn.Module, device: torch.device) -> None:
    """Make a LightningModule's ``device`` read ``device`` without moving any weight (a model already placed,
    maybe across devices, used outside a Trainer). Relies on: Lightning's ``_DeviceDtypeModuleMixin`` keeps the
    device in ``_device``, set on the module and its submodules by ``device_dtype_mixin._update_properties``."""
    from lightning.fabric.utilities.device_dtype_mixin import _update_properties

    _update_properties(module, device=torch.device(device))
