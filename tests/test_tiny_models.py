"""Tiny offline models of every family: reload, chat template, process, forward, generate, left-padded batches,
and the no-torchvision processor workaround."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from l2s_lightning.models.processor import has_working_torchvision, load_processor
from l2s_lightning.testing.tiny_models import build_tiny

FAMILIES = ["llama", "llava", "qwen2_vl", "qwen2_5_vl"]
MULTIMODAL = ["llava", "qwen2_vl", "qwen2_5_vl"]
IMAGE_TOKEN = {"llava": "<image>", "qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>"}


def load(folder: Path, family: str) -> tuple[Any, Any]:
    """(processor or tokenizer, model in eval mode) through the Auto classes."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForCausalLM if family == "llama" else AutoModelForImageTextToText
    return load_processor(folder), auto.from_pretrained(folder).eval()


def message(text: str, image: bool) -> list[dict[str, Any]]:
    content: Any = [{"type": "image"}, {"type": "text", "text": text}] if image else text
    return [{"role": "user", "content": content}]


def encode(processor: Any, family: str, texts: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
    prompts = [
        processor.apply_chat_template(message(t, family != "llama"), add_generation_prompt=True, tokenize=False)
        for t in texts
    ]
    if family == "llama":
        return dict(processor(prompts, padding=True, return_tensors="pt"))
    return dict(processor(text=prompts, images=images, padding=True, return_tensors="pt"))


@pytest.fixture(params=FAMILIES)
def family_dir(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"tiny_{request.param}_dir")


def test_forward_and_generate(family_dir: tuple[str, Path]) -> None:
    family, folder = family_dir
    processor, model = load(folder, family)
    enc = encode(
        processor, family, ["tell me about the dog in the picture"], [Image.new("RGB", (56, 56), (200, 30, 30))]
    )
    if family in MULTIMODAL:
        assert "pixel_values" in enc
        image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[family])
        assert int((enc["input_ids"] == image_id).sum()) == 4
    if family in ("qwen2_vl", "qwen2_5_vl"):
        assert {"image_grid_thw", "mm_token_type_ids"} <= set(enc)
        assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        generated = model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.logits.shape[:2] == enc["input_ids"].shape
    assert len(out.hidden_states) == model.config.get_text_config().num_hidden_layers + 1
    assert generated.shape == (1, enc["input_ids"].shape[1] + 3)


def test_left_padded_batch_matches_single_rows(family_dir: tuple[str, Path]) -> None:
    family, folder = family_dir
    processor, model = load(folder, family)
    texts = ["why?", "tell me about the dog in the picture please"]
    images = [Image.new("RGB", (56, 56), (10, 200, 10)), Image.new("RGB", (80, 60), (10, 10, 200))]
    batch = encode(processor, family, texts, images)
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and bool(mask[:, -1].all())  # left padding: the short row starts with padding
    with torch.no_grad():
        last = model(**batch).logits[:, -1]
        for row in range(2):
            single = encode(processor, family, texts[row : row + 1], images[row : row + 1])
            torch.testing.assert_close(model(**single).logits[:, -1], last[row : row + 1], atol=1e-4, rtol=1e-4)
        generated = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_content_forms(family: str, request: pytest.FixtureRequest) -> None:
    processor = load_processor(request.getfixturevalue(f"tiny_{family}_dir"))
    plain = [{"role": "user", "content": "hello"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    render = processor.apply_chat_template
    assert render(plain, tokenize=False) == render(parts, tokenize=False)
    opened = render(plain, add_generation_prompt=True, tokenize=False)
    assert opened != render(plain, tokenize=False)
    assert opened.endswith("ASSISTANT:" if family == "llava" else "<|im_start|>assistant\n")
    if family in MULTIMODAL:
        with_image = render(message("hello", image=True), add_generation_prompt=True, tokenize=False)
        image_part = "<image>\n" if family == "llava" else "<|vision_start|><|image_pad|><|vision_end|>"
        assert image_part + "hello" in with_image


def test_tokenizer_conventions(tiny_llava_dir: Path, tiny_qwen2_vl_dir: Path) -> None:
    for folder in (tiny_llava_dir, tiny_qwen2_vl_dir):
        tokenizer = load_processor(folder).tokenizer
        assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
        assert 300 < len(tokenizer) < 1200
        assert tokenizer.decode(tokenizer("the dog is safe.")["input_ids"]) == "the dog is safe."


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_deterministic_and_seeded(family: str, tmp_path: Path) -> None:
    a, b, c = (build_tiny(family, tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    weights = [(folder / "model.safetensors").read_bytes() for folder in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]


def test_build_sizes_and_unknown_family(tmp_path: Path) -> None:
    from transformers import AutoConfig

    folder = build_tiny("qwen2_5_vl", tmp_path / "q", num_layers=2, hidden_size=32)
    text = AutoConfig.from_pretrained(folder).get_text_config()
    assert (text.num_hidden_layers, text.hidden_size) == (2, 32)
    with pytest.raises(ValueError, match="unknown family"):
        build_tiny("gpt2", tmp_path / "x")


def test_load_processor_qwen_without_torchvision(tiny_qwen2_vl_dir: Path, tiny_qwen2_5_vl_dir: Path) -> None:
    for folder, name in ((tiny_qwen2_vl_dir, "Qwen2VLProcessor"), (tiny_qwen2_5_vl_dir, "Qwen2_5_VLProcessor")):
        processor = load_processor(folder)
        assert name in [cls.__name__ for cls in type(processor).__mro__]
        if not has_working_torchvision():
            assert type(processor).__name__ == f"{name}ImageOnly"
            assert processor.get_attributes() == ["image_processor", "tokenizer"]
            assert not hasattr(processor, "video_processor")
        out = processor(
            text=["<|vision_start|><|image_pad|><|vision_end|>hi"],
            images=[Image.new("RGB", (56, 56))],
            return_tensors="pt",
        )
        assert int((out["input_ids"] == processor.image_token_id).sum()) == 4
        assert out["mm_token_type_ids"].sum() == 4
        # spawned loader workers get it pickled (the collate_fn holds it)
        copy = pickle.loads(pickle.dumps(processor))
        assert type(copy) is type(processor) and copy.chat_template == processor.chat_template
        again = copy(
            text=["<|vision_start|><|image_pad|><|vision_end|>hi"],
            images=[Image.new("RGB", (56, 56))],
            return_tensors="pt",
        )
        assert all(torch.equal(again[k], out[k]) for k in out)


def test_workaround_not_used_with_working_torchvision(tiny_qwen2_vl_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With torchvision reported working, load_processor is plain AutoProcessor (its errors propagate)."""
    import l2s_lightning.models.processor as module

    monkeypatch.setattr(module, "has_working_torchvision", lambda: True)
    if has_working_torchvision():
        assert type(load_processor(tiny_qwen2_vl_dir)).__name__ == "Qwen2VLProcessor"
    else:
        with pytest.raises(Exception, match="(?i)torchvision|video"):
            load_processor(tiny_qwen2_vl_dir)


def test_workaround_infers_class_from_model_type(tiny_qwen2_vl_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_qwen2_vl_dir, tmp_path / "no_class"))
    for name in ("processor_config.json", "tokenizer_config.json"):
        data = json.loads((folder / name).read_text())
        data.pop("processor_class", None)
        (folder / name).write_text(json.dumps(data))
    processor = load_processor(folder)
    from transformers import Qwen2VLProcessor

    assert isinstance(processor, Qwen2VLProcessor)


def test_workaround_leaves_other_errors_alone(tmp_path: Path) -> None:
    with pytest.raises(Exception):
        load_processor(tmp_path / "missing")
