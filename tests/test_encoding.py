"""`ContrastEncoder`: batches encoded as the DataLoader's collate_fn equal those encoded in the step; each
batch's images are processed once even when a template suffix needs a second, plain prompt."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from l2s_lightning.data.datamodule import PromptDataModule, collate_items
from l2s_lightning.data.sources import JsonlSource
from l2s_lightning.extraction.encoding import ContrastEncoder, EncodedBatch, image_processing_once
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.models.loading import ModelSpec
from l2s_lightning.prompts import encode_prompts, render_prompt
from test_extraction import _items


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
def test_suffix_batch_processes_images_once_with_the_same_result(family, request):
    module = _module(request.getfixturevalue(f"tiny_{family}_dir"))
    items = _items(with_image=True, suffix=" Is it safe?")
    processor = module.loaded.processor
    counter = CountingImageProcessor(processor.image_processor)
    processor.image_processor = counter
    try:
        inputs = module.encoder.encode(items)
        assert counter.calls == 1  # the plain prompt of the context pass reused the suffixed prompt's pixels
        images = [item.image for item in items]
        separate = [
            encode_prompts(module.loaded, [render_prompt(module.loaded, item.question + extra, True) for item in items], images)
            for extra in (" Is it safe?", "")
        ]
        assert counter.calls == 3
    finally:
        processor.image_processor = counter.inner
    _assert_same(dict(inputs.prefix), separate[0])
    _assert_same(dict(inputs.context_prefix), separate[1])
    assert processor.image_processor is counter.inner


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
    data = PromptDataModule(JsonlSource(str(tmp_path / "data.jsonl")), split_file=str(tmp_path / "split.json"),
                            use_images=False, test_fraction=0.0)
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
