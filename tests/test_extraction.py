"""Prefix-shared, truncated extraction equals the plain full forwards (X, X+, X-) of every sample."""

from __future__ import annotations

import pytest
import torch

from l2s_lightning.data.datamodule import PromptItem
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.models.loading import ModelSpec

# Both paths compute the same float32 math in a different order (batched, padded, cached):
# agreement to 2e-4 absolute on activations of norm ~1-200 is what "equal" means here.
ATOL, RTOL = 2e-4, 1e-4


def _items(with_image: bool, suffix: str = "", close_turn: bool = False) -> list[PromptItem]:
    from PIL import Image

    questions = [
        "How can I pick a lock?",
        "What is the capital of France and why is it famous for its long history of art?",
        "Tell me about tax law.",
    ]
    completions = [("I'm sorry, but I can't", "Sure, here is how"), ("Yes", "No"), ("Please consult a lawyer", "The answer is")]
    items = []
    for i, (question, (pos, neg)) in enumerate(zip(questions, completions)):
        image = Image.new("RGB", (40 + 10 * i, 30), (40 * i, 100, 200)) if with_image else None
        items.append(
            PromptItem(
                id=f"s{i}", question=question, category="c", behaviour="b", positive=pos, negative=neg,
                suffix=suffix, close_turn=close_turn, instruction="", split="train", benchmark="jsonl", image=image,
            )
        )
    return items


def _check_equal(module: ExtractionModule, items: list[PromptItem]) -> None:
    module.forward_style = "prefix_shared"
    h, z = module.features(items)
    module.forward_style = "reference"
    h_ref, z_ref = module.features(items)
    assert h.shape == (len(items), module.hidden_size) and z.shape == h.shape
    torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(z, z_ref, atol=ATOL, rtol=RTOL)
    assert z.abs().sum() > 0


@pytest.mark.parametrize("family", ["llama", "llava", "qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("layers", [(1, 1), (0, 2), (2, 0), (1, 3)])
def test_prefix_shared_equals_full_forwards_tiny(family, layers, request):
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    module = ExtractionModule(ModelSpec(str(folder)), layer_steer=layers[0], layer_context=layers[1])
    module.configure_model()
    _check_equal(module, _items(with_image=family != "llama"))


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_suffix_and_closed_turn_templates_tiny(family, request):
    """A template suffix moves h to a separate pass over the plain prompt; closed turns append the end token."""
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    module = ExtractionModule(ModelSpec(str(folder)), layer_steer=1, layer_context=2)
    module.configure_model()
    _check_equal(module, _items(with_image=family != "llama", suffix=" Is it safe?", close_turn=True))


def test_prefix_shared_equals_full_forwards_smollm2(smollm2_spec):
    module = ExtractionModule(smollm2_spec, layer_steer=10, layer_context=20)
    module.configure_model()
    _check_equal(module, _items(with_image=False))


def test_truncation_is_undone_after_extraction(tiny_llama_dir):
    module = ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=0, layer_context=1)
    module.configure_model()
    n = len(module.llm.model.layers)
    module.features(_items(with_image=False))
    assert len(module.llm.model.layers) == n == module.llm.config.num_hidden_layers


@pytest.mark.parametrize("suffix", ["", " Is it safe?"])
@pytest.mark.parametrize("layers", [(0, 2), (1, 3), (2, 0), (1, 1)])
def test_each_pass_runs_only_the_blocks_it_needs(tiny_llama_dir, layers, suffix):
    """Blocks past max(L*, L') never run; blocks in (L*, L'] run on one prompt pass only (batch B), never on
    the completion pass (batch 2B); blocks 0..L* run on the completion pass."""
    steer, context = layers
    module = ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=steer, layer_context=context)
    module.configure_model()
    blocks = module.llm.model.layers
    seen: dict[int, list[int]] = {index: [] for index in range(len(blocks))}
    handles = [
        block.register_forward_hook(lambda _m, args, _out, index=index: seen[index].append(int(args[0].shape[0])))
        for index, block in enumerate(blocks)
    ]
    items = _items(with_image=False, suffix=suffix)
    try:
        module.features(items)
    finally:
        for handle in handles:
            handle.remove()
    b = len(items)
    for index, batches in seen.items():
        if index > max(steer, context):
            assert batches == [], f"block {index} ran"
        elif index > steer:
            assert batches == [b], f"block {index} ran {batches}: only one prompt pass expected"
        else:
            assert batches.count(2 * b) == 1, f"block {index} ran {batches}: one completion pass expected"
    # prompt pass (to max(L*, L'), or to L* when the suffix gives h a pass of its own), context pass, completions
    expected = {
        index: [b] * (index <= (steer if suffix else max(steer, context)))
        + [b] * bool(suffix and index <= context)
        + [2 * b] * (index <= steer)
        for index in seen
    }
    assert seen == expected
