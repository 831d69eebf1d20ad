"""Block-wise ``torch.compile`` for the forward passes of feature extraction.

Extraction runs the prompt and the completions through a truncated decoder with shapes that change from
batch to batch (prompt and completion widths). Compiling each block's ``forward`` with ``dynamic=True``
fuses the elementwise work around the matrix products (RMSNorm, rotary embeddings, SiLU·up, residual adds)
with one graph per block kind that serves every shape, while the module's ``__call__`` stays eager: forward
hooks (the capture hooks of extraction, steering hooks) run as before, and ``truncated_decoder`` still cuts
the block list. The first batches pay the compilation (one graph per block kind, then one dynamic
recompile when a second shape arrives); ``bench/extraction.py --compile-layers`` measures the gain, and
``tests/test_compile.py`` checks that compiled blocks give the eager features.
"""

from __future__ import annotations

import torch
from torch import nn

from l2s_lightning.errors import L2SInputError
from l2s_lightning.internals import is_compiled_function, raise_recompile_limits
from l2s_lightning.models.layers import decoder_layers


def vision_layers(model: nn.Module) -> nn.ModuleList | None:
    """The encoder blocks of an MLLM's vision tower (CLIP's ``encoder.layers``, Qwen2-VL's ``blocks``), or None."""
    base = getattr(model, "model", model)
    tower = getattr(base, "vision_tower", None) or getattr(base, "visual", None)
    if tower is None:
        return None
    for name in ("layers", "blocks"):
        for module in tower.modules():
            found = getattr(module, name, None)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return found
    return None


def is_compiled_block(block: nn.Module) -> bool:
    """True when :func:`compile_blocks` has compiled ``block``'s forward."""
    return "forward" in vars(block) and is_compiled_function(vars(block)["forward"])


def compile_blocks(model: nn.Module, depth: int | None = None, vision: bool = True, mode: str | None = None) -> int:
    """``torch.compile(dynamic=True)`` the ``forward`` of decoder blocks ``0..depth-1`` (all when None) and,
    with ``vision``, of the vision tower's encoder blocks; returns the number of blocks compiled now.

    Idempotent (a compiled block is left as it is). Hooks registered on the blocks still run, eagerly,
    around the compiled forward. ``mode``: a ``torch.compile`` mode (default: inductor's default; CUDA
    graphs would not suit shapes that change every batch).
    """
    blocks = list(decoder_layers(model))
    if depth is not None:
        if not 0 < depth <= len(blocks):
            raise L2SInputError(f"depth={depth} must be in 1..{len(blocks)} (the model's decoder blocks)")
        blocks = blocks[:depth]
    if vision:
        blocks += list(vision_layers(model) or [])
    todo = [block for block in blocks if not is_compiled_block(block)]
    raise_recompile_limits(len(blocks))
    for block in todo:
        block.forward = torch.compile(block.forward, dynamic=True, mode=mode)
    return len(todo)
