"""Choosing the extraction batch size from free accelerator memory.

The prefix-shared truncated forward (:func:`l2s_lightning.extraction.forward.prefix_shared_features`) keeps,
per sample, the KV cache of ``layer_depth`` blocks over the prompt, duplicated for the two completions, plus
the transient activations of the widest block step. :func:`per_sample_bytes` estimates that (on the
generous side); :func:`auto_batch_size` divides free memory by it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from l2s_lightning.errors import L2SInputError
from l2s_lightning.models.layers import text_config

CPU_BATCH_SIZE = 16


def _vision_sizes(config) -> tuple[int, int, int, int]:
    """(width, layers, MLP width, heads) of ``config``'s vision tower; zeros without one."""
    vision = getattr(config, "vision_config", None)
    if vision is None:
        return 0, 0, 0, 0
    width = int(getattr(vision, "embed_dim", 0) or getattr(vision, "hidden_size", 0) or 0)  # Qwen2-VL: embed_dim
    layers = int(getattr(vision, "num_hidden_layers", 0) or getattr(vision, "depth", 0) or 0)
    inner = int(getattr(vision, "intermediate_size", 0) or (getattr(vision, "mlp_ratio", 0) or 4) * width)
    heads = int(getattr(vision, "num_heads", 0) or getattr(vision, "num_attention_heads", 0) or 1)
    return width, layers, inner, heads


def _fixed_size_tower(config) -> bool:
    vision = getattr(config, "vision_config", None)
    return bool(getattr(vision, "image_size", None) and getattr(vision, "patch_size", None))


def _vision_bytes(config, element: int, vision_tokens: int | None = None) -> int:
    """Activations of one sample's image(s) in the vision tower.

    A fixed-size tower (CLIP / SigLIP: ``image_size``, ``patch_size``) sees ``(image_size / patch_size)² + 1``
    tokens and keeps all its hidden states (LLaVA-style models read a middle layer), plus the widest MLP
    step. A dynamic-resolution tower (Qwen2-VL, Qwen2.5-VL: no ``image_size``) sees ``vision_tokens`` patches
    (the sum of ``image_grid_thw``'s t·h·w, 4 patches per image token in the prompt) and keeps only the
    current block's states: a few residual-width copies and the MLP intermediate. Its attention scores are
    built one image at a time: :func:`vision_attention_bytes`, once per batch.
    """
    width, layers, inner, _heads = _vision_sizes(config)
    if not (width and layers):
        return 0
    if _fixed_size_tower(config):
        vision = config.vision_config
        tokens = (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1
        return tokens * ((layers + 1) * width + 2 * inner) * element
    return int(vision_tokens or 0) * (4 * width + 2 * inner) * element


def vision_attention_bytes(config, largest_image: int | None, element: int = 2, attention_scores: bool = True) -> int:
    """The score matrices of an eager attention kernel in a dynamic-resolution vision tower, once per batch:
    transformers runs that tower's attention image by image, so the largest image's ``largest_image`` patches
    set it (heads × n × n logits in the model's dtype, their float32 softmax and its cast back). 0 for sdpa /
    flash kernels (``attention_scores`` False) and for fixed-size towers (counted per sample)."""
    if not attention_scores or not largest_image or _fixed_size_tower(config):
        return 0
    heads = _vision_sizes(config)[3]
    return heads * int(largest_image) ** 2 * (2 * element + 4)


def per_sample_bytes(
    config,
    prompt_tokens: int,
    completion_tokens: int,
    layer_depth: int,
    element_bytes: int = 2,
    attention_scores: bool = True,
    vision_tokens: int | None = None,
) -> int:
    """Estimated peak memory of one sample in the prefix-shared truncated forward (bytes).

    - KV cache: ``layer_depth`` blocks × (prompt + completion) tokens, for both completions (the prompt's
      cache is repeated ×2), plus one block's prompt cache while the repeat copies it;
    - the widest transient of one block over the prompt: a few residual-width copies, the MLP
      intermediate (gate, up, product) and, when ``attention_scores``, the (heads × P × P) score matrix of
      an eager / math attention kernel in float32;
    - hidden states kept by the capture hooks and the prompt output (3 × P × D), the vision tower's states
      (``vision_tokens``: the patches of a dynamic-resolution tower, see :func:`_vision_bytes`; its attention
      scores are a cost per batch, :func:`vision_attention_bytes`).
    """
    text = text_config(config)
    width = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or width // heads)
    inner = int(getattr(text, "intermediate_size", None) or 4 * width)
    p, c = int(prompt_tokens), int(completion_tokens)
    kv_token = 2 * kv_heads * head_dim * element_bytes  # keys + values of one token in one block
    kv = layer_depth * 2 * (p + c) * kv_token + p * kv_token
    block = 4 * p * width * element_bytes + 3 * p * inner * element_bytes
    if attention_scores:
        block += 2 * heads * p * (p + c) * 4
    kept = 3 * p * width * element_bytes + 2 * 2 * c * width * element_bytes
    return kv + block + kept + _vision_bytes(config, element_bytes, vision_tokens)


def vision_patches(inputs: Mapping[str, torch.Tensor]) -> tuple[int, int] | None:
    """(all patches, the largest image's patches) of encoded inputs with a dynamic-resolution image grid
    (``image_grid_thw``: t·h·w per image, Qwen2-VL / Qwen2.5-VL); None for other inputs."""
    grid = inputs.get("image_grid_thw")
    if grid is None or not len(grid):
        return None
    patches = grid.prod(-1)
    return int(patches.sum()), int(patches.max())


def free_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can get on a CUDA device (free memory plus the caching allocator's idle
    blocks); None off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + idle)


def _floor_pow2(n: int) -> int:
    return 1 << (max(int(n), 1).bit_length() - 1)


def auto_batch_size(
    model: nn.Module,
    prompt_tokens: int,
    completion_tokens: int,
    layer_depth: int,
    free_bytes: int | None = None,
    safety: float = 0.8,
    max_batch: int = 256,
    vision_tokens: int | None = None,
    largest_image: int | None = None,
) -> int:
    """The largest power-of-two batch whose estimated peak fits in ``safety × free_bytes``.

    ``model``: an ``nn.Module`` (or a config) of the model; ``prompt_tokens``: prompt length including image
    tokens; ``completion_tokens``: the longest completion; ``layer_depth``: blocks run (max(L*, L') + 1);
    ``vision_tokens``: patches of a dynamic-resolution vision tower (Qwen2-VL) for one sample;
    ``largest_image``: the patches of its largest image (default ``vision_tokens``), which set the tower's
    attention scores (a cost per batch, taken off the free memory first).
    ``free_bytes`` defaults to the free memory of the model's CUDA device; on CPU (no ``free_bytes``) the
    answer is a fixed :data:`CPU_BATCH_SIZE`. Always in ``1..max_batch``.
    """
    if max_batch < 1:
        raise L2SInputError(f"max_batch={max_batch} must be >= 1")
    if not 0 < safety <= 1:
        raise L2SInputError(f"safety={safety} must be in (0, 1]")
    if prompt_tokens < 1 or completion_tokens < 0 or layer_depth < 1:
        raise L2SInputError("prompt_tokens and layer_depth must be >= 1, completion_tokens >= 0")
    config = model.config if isinstance(model, nn.Module) else model
    element = 2
    attention_scores = True
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        if parameter is not None:
            element = parameter.element_size()
        if free_bytes is None and parameter is not None:
            free_bytes = free_memory(parameter.device)
        implementation = getattr(text_config(config), "_attn_implementation", None)
        # sdpa / flash kernels do not materialise the score matrix; eager (and unknown) ones do
        attention_scores = implementation in (None, "eager")
    if free_bytes is None:
        return _floor_pow2(min(CPU_BATCH_SIZE, max_batch))
    need = per_sample_bytes(
        config, prompt_tokens, completion_tokens, layer_depth, element, attention_scores, vision_tokens
    )
    per_batch = vision_attention_bytes(config, largest_image or vision_tokens, element, attention_scores)
    fits = (int(safety * free_bytes) - per_batch) // max(need, 1)
    return _floor_pow2(max(1, min(fits, max_batch)))
