"""`ContrastEncoder`: batches encoded as the DataLoader's collate_fn equal those encoded in the step; each
batch's images are processed once even when a template suffix needs a second, plain prompt, and the two
plain prompt is encoded as its tail after the tokens it shares with the suffixed one."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_extraction import _items

from l2s_lightning.data.datamodule import PromptDataModule, collate_items
from l2s_lightning.data.sources import JsonlSource
from l2s_lightning.extraction.encoding import ContrastEncoder, EncodedBatch, image_processing_once
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.extraction.prompt_split import shared_positions_mask, split_context_prompt, unpadded_rows
from l2s_lightning.models.loading import ModelSpec
from l2s_lightning.prompts import encode_prompts, render_prompt


def _module(folder) -> ExtractionModule:
    module = ExtractionModule(ModelSpec(str(folder)), layer_steer=1, layer_context=2)
    module.configure_model()
    return module


class CountingImageProcessor:
    """Counts the calls of an image processor (every other attribute is the real one's)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_suffix_batch_processes_images_once_and_keeps_only_the_plain_prompts_tail(family, request):
    module = _module(request.getfixturevalue(f"tiny_{family}_dir"))
    items = _items(with_image=True, suffix=" Is it safe?")
    processor = module.loaded.processor
    counter = CountingImageProcessor(processor.image_processor)
    processor.image_processor = counter
    try:
        inputs = module.encoder.encode(items)
        assert counter.calls == 1  # the plain prompt reused the suffixed prompt's pixels
        images = [item.image for item in items]
        suffixed, plain = (
            encode_prompts(
                module.loaded, [render_prompt(module.loaded, item.question + extra, True) for item in items], images
            )
            for extra in (" Is it safe?", "")
        )
        assert counter.calls == 3
    finally:
        processor.image_processor = counter.inner
    assert processor.image_processor is counter.inner
    _assert_same(dict(inputs.prefix), suffixed)  # X: the suffixed prompt, as encoded alone
    context = inputs.context
    for i in range(len(items)):
        # the plain prompt is, token for token, the suffixed prompt's positions in the tail's prefix_mask
        # (the image and the question) followed by the tail
        shared = inputs.prefix["input_ids"][i][context.prefix_mask[i].bool()].tolist()
        tail = context.ids[i, : context.lengths[i]].tolist()
        assert shared + tail == unpadded_rows(plain)[i]
        assert len(tail) < 8 < len(shared) and processor.image_token_id in shared
        assert shared == unpadded_rows(suffixed)[i][: len(shared)]
    assert not (context.prefix_mask.bool() & ~inputs.prefix["attention_mask"].bool()).any()  # never a padded position


def test_context_split_refuses_an_image_token_in_the_tail():
    prompt = {"input_ids": torch.tensor([[0, 5, 6, 9]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    context = {"input_ids": torch.tensor([[5, 6, 8, 7]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    split = split_context_prompt(prompt, context)
    assert split.shared == [2] and split.tails == [[8, 7]]
    assert shared_positions_mask(prompt["attention_mask"], split.shared).tolist() == [[0, 1, 1, 0]]
    with pytest.raises(ValueError, match="row 0: an image token of the context prompt lies after the tokens it shares"):
        split_context_prompt(prompt, context, image_token_id=7)
    # the same prompt twice still leaves the tail its last token, where h is read
    same = split_context_prompt(prompt, prompt)
    assert same.shared == [2] and same.tails == [[9]]


def test_image_processing_once_is_scoped_to_the_block(tiny_llava_dir):
    module = _module(tiny_llava_dir)
    processor = module.loaded.processor
    inner = processor.image_processor
    images = [item.image for item in _items(with_image=True)]
    with image_processing_once(processor):
        first = processor.image_processor(images, return_tensors="pt")
        again = processor.image_processor(images, return_tensors="pt")
        other = processor.image_processor(images[:1], return_tensors="pt")
        assert processor.image_processor.size == inner.size  # attributes are the real processor's
    assert processor.image_processor is inner
    assert torch.equal(first["pixel_values"], again["pixel_values"]) and first is not again
    assert other["pixel_values"].shape[0] == 1


@pytest.mark.parametrize("family", ["llama", "llava", "qwen2_5_vl"])
def test_loader_encoded_batch_gives_the_features_of_the_rows(family, request):
    module = _module(request.getfixturevalue(f"tiny_{family}_dir"))
    items = _items(with_image=family != "llama")
    batch = module.collate_fn()(items)
    assert isinstance(batch, EncodedBatch)
    assert [item.id for item in batch.items] == [item.id for item in items]
    assert all(item.image is None for item in batch.items)  # pixels travel once, inside batch.inputs
    assert items[0].image is not None or family == "llama"  # the loader's rows are left as they were
    h, z = module.features(batch)
    h_rows, z_rows = module.features(items)
    assert torch.equal(h, h_rows) and torch.equal(z, z_rows)
    out = module.predict_step(module.collate_fn()(items), 0)
    assert out["sample_id"] == [item.id for item in items] and torch.equal(out["steer"], z_rows)


def test_datamodule_uses_the_module_encoder(tiny_llama_dir, tmp_path):
    (tmp_path / "data.jsonl").write_text('{"id": "a", "question": "How?", "positive": "No", "negative": "Yes"}\n')
    data = PromptDataModule(
        JsonlSource(str(tmp_path / "data.jsonl")),
        split_file=str(tmp_path / "split.json"),
        use_images=False,
        test_fraction=0.0,
    )
    assert data.collate_fn() is collate_items  # no trainer: rows stay rows
    module = _module(tiny_llama_dir)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    data.trainer = trainer
    loader = data.predict_dataloader()
    assert isinstance(loader.collate_fn, ContrastEncoder) and loader.collate_fn is module.encoder
    assert loader.pin_memory is False  # page-locked memory only for CUDA
    (batch,) = list(loader)
    assert isinstance(batch, EncodedBatch) and [item.id for item in batch.items] == ["a"]
