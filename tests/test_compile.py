"""`compile_blocks` / ExtractionModule(compile=True): compiled blocks give the eager features, the capture
hooks still run, and only the blocks extraction runs are compiled (CPU inductor; about a minute)."""

from __future__ import annotations

import pytest
import torch
from test_extraction import ATOL, RTOL, _items

from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.models.compile import compile_blocks, is_compiled_block, vision_layers
from l2s_lightning.models.layers import decoder_layers
from l2s_lightning.models.loading import ModelSpec


def test_compiled_extraction_equals_eager(tiny_llava_dir):
    eager = ExtractionModule(ModelSpec(str(tiny_llava_dir)), layer_steer=0, layer_context=1)
    eager.configure_model()
    compiled = ExtractionModule(ModelSpec(str(tiny_llava_dir)), layer_steer=0, layer_context=1, compile=True)
    compiled.configure_model()
    blocks = decoder_layers(compiled.llm)
    assert [is_compiled_block(b) for b in blocks] == [True, True] + [False] * (len(blocks) - 2)  # blocks 0..max(L*, L')
    assert all(is_compiled_block(b) for b in vision_layers(compiled.llm))
    assert not any(is_compiled_block(b) for b in decoder_layers(eager.llm))
    items = _items(with_image=True)
    for batch in (items, items[:2], items):  # two batch shapes: the dynamic graph serves both
        h, z = compiled.features(batch)
        h_ref, z_ref = eager.features(batch)
        torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(z, z_ref, atol=ATOL, rtol=RTOL)
    assert compile_blocks(compiled.llm, depth=2) == 0  # idempotent
    compiled.configure_model()  # a second configure_model compiles nothing again
    assert all(is_compiled_block(b) for b in blocks[:2])


def test_compile_blocks_depth_is_checked(tiny_llama_dir):
    module = ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=0, layer_context=0)
    module.configure_model()
    n = len(decoder_layers(module.llm))
    for depth in (0, n + 1):
        with pytest.raises(ValueError, match=rf"depth={depth} must be in 1..{n}"):
            compile_blocks(module.llm, depth=depth)
    assert vision_layers(module.llm) is None
    assert not any(is_compiled_block(b) for b in decoder_layers(module.llm))
