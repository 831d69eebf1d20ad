"""Tiny random LLaVA-1.5 / Qwen2-VL / Qwen2.5-VL / Llama models with real processors, built offline.

For tests and CPU benchmarks: each builder trains a small byte-level BPE tokenizer, builds the model from
its config with random weights (seeded), and saves model + processor so that
``load_processor(folder)`` and ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM.from_pretrained``
load them with no hub access. LLaVA images are resized/cropped to 28×28 (4 image tokens); Qwen images are
resized to about 56×56 pixels keeping the aspect ratio (square: 4 merged tokens; other shapes 2–6).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = [
    "<pad>",
    "<s>",
    "</s>",
    "<image>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_WORDS = (
    "the a an is are was how what why can could should I you we they do does make find tell me about image picture "
    "photo dog cat car person table chair yes no safe harmful legal money health doctor lawyer question answer please "
    "sorry help here steps first sure thing number capital France Paris lock pick house neighbour tax law consult "
    "expert advice illegal cannot assist request follow recommend professional speak with"
).split()

_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    + _CONTENT.replace("IMAGE", "<image>\n")
    + " {% elif message['role'] == 'system' %}"
    + _CONTENT.replace("IMAGE", "")
    + " {% else %}ASSISTANT: "
    + _CONTENT.replace("IMAGE", "")
    + "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + _CONTENT.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(chat_template: str, eos: str, seed: int = 0):
    """A byte-level BPE (~500 tokens) trained on generated sentences, left-padding, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    sentences = [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".?!") for _ in range(400)
    ]
    sentences += ["USER: ASSISTANT: user assistant system"] * 5
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token=eos,
        padding_side="left",
        chat_template=chat_template,
        extra_special_tokens={},
    )


def _text_config(tokenizer, num_layers: int, hidden_size: int) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _save(model, processor, folder: Path, tokenizer) -> Path:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def random_llama(seed: int = 0, layers: int = 4, hidden_size: int = 32):
    """An in-memory random Llama (vocabulary 128, pad 0, bos 1, eos 2) in eval mode, for hook-level tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def greedy_generate(model, prompts, new_tokens: int, **kwargs) -> tuple[int, Any]:
    """A greedy run of exactly ``new_tokens`` tokens on token-id ``prompts`` (left-padded with 0), scores and raw
    logits kept: (the padded prompt width, ``generate``'s output)."""
    from l2s_lightning.prompts import left_pad

    ids, mask = left_pad(prompts, 0)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    return ids.shape[1], out


def next_block_inputs(model, layer: int, run: Callable[[], None]) -> torch.Tensor:
    """Everything block ``layer + 1`` received during ``run()`` (= block ``layer``'s output), concatenated over
    calls along the sequence axis."""
    from l2s_lightning.models.layers import decoder_layers

    seen: list[torch.Tensor] = []
    handle = decoder_layers(model)[layer + 1].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        run()
    finally:
        handle.remove()
    return torch.cat(seen, dim=1)


def build_tiny_llama(folder: str | Path, *, num_layers: int = 4, hidden_size: int = 64, seed: int = 0) -> Path:
    """A text-only LlamaForCausalLM with a ChatML template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer(CHATML_TEMPLATE, eos="<|im_end|>", seed=seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_text_config(tokenizer, num_layers, hidden_size)))
    return _save(model, tokenizer, folder, tokenizer)


def llava_processor(tokenizer, image_size: int, patch_size: int = 14):
    """A LlavaProcessor as LLaVA-1.5's (CLIP resize to ``image_size``, centre crop, CLIP mean/std; one image
    token per patch) around ``tokenizer`` (which must hold ``<image>``). LLaVA-1.5-7B: 336 / 14 = 576 tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
        image_token="<image>",
    )


def build_tiny_llava(folder: str | Path, *, num_layers: int = 4, hidden_size: int = 64, seed: int = 0) -> Path:
    """A LlavaForConditionalGeneration (CLIP vision tower, 28×28 images → 4 image tokens)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    folder = Path(folder)
    tokenizer = build_tokenizer(LLAVA_TEMPLATE, eos="</s>", seed=seed)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = LlavaConfig(  # type: ignore[call-arg]  # transformers 5 takes image_token_id and pad_token_id
        vision_config=vision,
        text_config=LlamaConfig(**_text_config(tokenizer, num_layers, hidden_size)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    processor = llava_processor(tokenizer, image_size=28, patch_size=14)
    return _save(model, processor, folder, tokenizer)


def _qwen_vision_tokens(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen_text(tokenizer, num_layers: int, hidden_size: int) -> dict:
    head_dim = hidden_size // 4
    quarter = head_dim // 2
    section = [quarter - 2 * (quarter // 3), quarter // 3, quarter // 3]
    return _text_config(tokenizer, num_layers, hidden_size) | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
    }


def _qwen_processor(processor_class, tokenizer):
    from transformers import Qwen2VLImageProcessor

    from l2s_lightning.models.processor import has_working_torchvision, image_only

    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    cls = processor_class if has_working_torchvision() else image_only(processor_class)
    processor = cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHATML_TEMPLATE)
    return processor


def _save_qwen(model, processor, folder: Path, tokenizer, processor_class) -> Path:
    _save(model, processor, folder, tokenizer)
    # An image-only processor saves under its subclass name; record the real class for loading.
    import json

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            if name == "tokenizer_config.json" and "processor_class" not in data:
                continue
            data["processor_class"] = processor_class.__name__
            path.write_text(json.dumps(data, indent=2))
    return folder


def build_tiny_qwen2_vl(folder: str | Path, *, num_layers: int = 4, hidden_size: int = 64, seed: int = 0) -> Path:
    """A Qwen2VLForConditionalGeneration (56×56 images → 16 patches → 4 merged image tokens)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    folder = Path(folder)
    tokenizer = build_tokenizer(CHATML_TEMPLATE, eos="<|im_end|>", seed=seed)
    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": hidden_size,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    config = Qwen2VLConfig(
        text_config=_qwen_text(tokenizer, num_layers, hidden_size),
        vision_config=vision,
        **_qwen_vision_tokens(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    return _save_qwen(model, _qwen_processor(Qwen2VLProcessor, tokenizer), folder, tokenizer, Qwen2VLProcessor)


def build_tiny_qwen2_5_vl(folder: str | Path, *, num_layers: int = 4, hidden_size: int = 64, seed: int = 0) -> Path:
    """A Qwen2_5_VLForConditionalGeneration (windowed vision attention, 4 merged image tokens)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    folder = Path(folder)
    tokenizer = build_tokenizer(CHATML_TEMPLATE, eos="<|im_end|>", seed=seed)
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "out_hidden_size": hidden_size,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "in_channels": 3,
    }
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tokenizer, num_layers, hidden_size),
        vision_config=vision,
        **_qwen_vision_tokens(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    return _save_qwen(model, _qwen_processor(Qwen2_5_VLProcessor, tokenizer), folder, tokenizer, Qwen2_5_VLProcessor)


BUILDERS: dict[str, Callable[..., Path]] = {
    "llama": build_tiny_llama,
    "llava": build_tiny_llava,
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
}


def build_tiny(family: str, folder: str | Path, **kwargs) -> Path:
    """Build the tiny model of ``family`` ("llama", "llava", "qwen2_vl", "qwen2_5_vl") into ``folder``."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[family](folder, **kwargs)
