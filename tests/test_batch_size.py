"""`auto_batch_size`: pure arithmetic on a config (no weights, no GPU)."""

from __future__ import annotations

import pytest
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from l2s_lightning.extraction.batch_size import CPU_BATCH_SIZE, auto_batch_size, per_sample_bytes

GIB = 1 << 30


def _llava_7b() -> LlavaConfig:
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    return LlavaConfig(text_config=text, vision_config=vision)


def _small() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=500,
    )


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@pytest.mark.parametrize("config", [_llava_7b(), _small()])
def test_monotone_in_free_memory(config):
    sizes = [auto_batch_size(config, 616, 20, 16, free_bytes=gib * GIB) for gib in (0, 1, 2, 4, 8, 16, 32, 64, 80)]
    assert sizes == sorted(sizes)
    assert all(_is_pow2(s) and 1 <= s <= 256 for s in sizes)
    assert sizes[0] == 1  # never below one, even with no memory


def test_monotone_in_tokens_and_depth():
    config = _llava_7b()
    free = 64 * GIB
    by_prompt = [auto_batch_size(config, p, 20, 16, free_bytes=free) for p in (40, 200, 616, 1200, 4000)]
    by_completion = [auto_batch_size(config, 616, c, 16, free_bytes=free) for c in (1, 20, 200, 2000)]
    by_depth = [auto_batch_size(config, 616, 20, d, free_bytes=free) for d in (1, 8, 16, 32)]
    for sizes in (by_prompt, by_completion, by_depth):
        assert sizes == sorted(sizes, reverse=True)
    assert by_prompt[0] > by_prompt[-1]
    per = [per_sample_bytes(config, p, 20, 16) for p in (40, 616, 1200)]
    assert per == sorted(per) and len(set(per)) == 3


def test_capped_and_safety():
    config = _small()
    assert auto_batch_size(config, 10, 5, 2, free_bytes=1 << 50) == 256
    assert auto_batch_size(config, 10, 5, 2, free_bytes=1 << 50, max_batch=100) == 64
    assert auto_batch_size(config, 10, 5, 2, free_bytes=1 << 50, max_batch=1) == 1
    big = _llava_7b()
    assert auto_batch_size(big, 616, 20, 16, free_bytes=64 * GIB, safety=0.4) <= auto_batch_size(
        big, 616, 20, 16, free_bytes=64 * GIB, safety=0.8
    )


def test_llava_7b_estimate_is_plausible():
    """~0.3 GB of KV cache per sample (16 blocks × 636 tokens × 2 completions × 16 KiB) plus activations."""
    per = per_sample_bytes(_llava_7b(), 616, 20, 16)
    assert 0.3 * GIB < per < 1.0 * GIB
    # 64 GiB free on an 80 GB card (14 GB of bf16 weights) -> a batch of 64
    assert auto_batch_size(_llava_7b(), 616, 20, 16, free_bytes=64 * GIB) == 64


def test_cpu_default_and_module(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert auto_batch_size(model, 50, 10, 2) == CPU_BATCH_SIZE
    assert auto_batch_size(model, 50, 10, 2, max_batch=5) == 4
    assert auto_batch_size(model, 50, 10, 2, free_bytes=1 << 40) == 256


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        auto_batch_size(_small(), 0, 5, 2, free_bytes=GIB)
    with pytest.raises(ValueError):
        auto_batch_size(_small(), 10, 5, 0, free_bytes=GIB)
    with pytest.raises(ValueError):
        auto_batch_size(_small(), 10, 5, 2, free_bytes=GIB, max_batch=0)
    with pytest.raises(ValueError):
        auto_batch_size(_small(), 10, 5, 2, free_bytes=GIB, safety=0)


def _qwen2_vl_7b():
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config={
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
        },
        vision_config={"embed_dim": 1280, "hidden_size": 3584, "depth": 32, "num_heads": 16, "mlp_ratio": 4},
    )


def test_dynamic_resolution_vision_tower_is_counted():
    """Qwen2-VL's tower sees 4 patches per image token: a larger image needs more memory per sample, beyond
    its longer prompt; an eager kernel's patch × patch scores, built one image at a time, once per batch."""
    from l2s_lightning.extraction.batch_size import vision_attention_bytes

    config = _qwen2_vl_7b()
    image_tokens = 1000  # a ~900 × 900 image
    prompt, patches = image_tokens + 40, 4 * image_tokens
    tower = per_sample_bytes(config, prompt, 20, 16, vision_tokens=patches) - per_sample_bytes(config, prompt, 20, 16)
    assert tower == patches * (4 * 1280 + 2 * 4 * 1280) * 2  # residual copies and the MLP, in bf16
    assert vision_attention_bytes(config, patches) == 16 * patches**2 * 8  # bf16 logits, float32 softmax, bf16 copy
    assert vision_attention_bytes(config, patches, attention_scores=False) == 0
    assert vision_attention_bytes(_llava_7b(), patches) == 0  # a fixed-size tower: counted per sample
    free = 40 * GIB
    sizes = [
        auto_batch_size(config, prompt, 20, 16, free_bytes=free, **kw)
        for kw in ({}, {"vision_tokens": patches}, {"vision_tokens": 2 * patches, "largest_image": patches})
    ]
    assert sizes[0] > sizes[1] >= sizes[2] >= 1
    need = per_sample_bytes(config, prompt, 20, 16, vision_tokens=patches)
    assert sizes[1] == 1 << ((int(0.8 * free) - vision_attention_bytes(config, patches)) // need).bit_length() - 1
    # a fixed-size tower (CLIP) does not depend on vision_tokens
    assert per_sample_bytes(_llava_7b(), 616, 20, 16, vision_tokens=10_000) == per_sample_bytes(
        _llava_7b(), 616, 20, 16
    )


def test_vision_patches_of_encoded_qwen2_vl_inputs(tiny_qwen2_vl_dir):
    """The patches a Qwen2-VL prompt sends through the tower: 4 per image token of the prompt."""
    from PIL import Image

    from l2s_lightning.extraction.batch_size import vision_patches
    from l2s_lightning.models.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec(str(tiny_qwen2_vl_dir)))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    text = loaded.processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = loaded.processor(text=[text], images=[Image.new("RGB", (112, 84))], return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == loaded.model.config.image_token_id).sum())
    assert image_tokens > 0 and vision_patches(inputs) == (4 * image_tokens, 4 * image_tokens)
    import torch

    assert vision_patches({"image_grid_thw": torch.tensor([[1, 8, 6], [1, 4, 4]])}) == (64, 48)  # two images
    assert vision_patches({"input_ids": inputs["input_ids"]}) is None
