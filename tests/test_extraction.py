"""Prefix-shared, truncated extraction equals the plain full forwards (X, X+, X-) of every sample."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from l2s_lightning.data.items import PromptItem
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.models.loading import ModelSpec
from l2s_lightning.prompts import append_tokens

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
    completions = [
        ("I'm sorry, but I can't", "Sure, here is how"),
        ("Yes", "No"),
        ("Please consult a lawyer", "The answer is"),
    ]
    items = []
    for i, (question, (pos, neg)) in enumerate(zip(questions, completions)):
        image = Image.new("RGB", (40 + 10 * i, 30), (40 * i, 100, 200)) if with_image else None
        items.append(
            PromptItem(
                id=f"s{i}",
                question=question,
                category="c",
                behaviour="b",
                positive=pos,
                negative=neg,
                suffix=suffix,
                close_turn=close_turn,
                instruction="",
                split="train",
                benchmark="jsonl",
                image=image,
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


@pytest.mark.parametrize("family", ["llama", "llava", "qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("layers", [(1, 2), (2, 0)])
def test_suffix_and_closed_turn_templates_tiny(family, layers, request):
    """With a template suffix h is read from the plain prompt (its tail run on the shared tokens' cache);
    closed turns append the end token. One row has no suffix: its two prompts are the same."""
    folder = request.getfixturevalue(f"tiny_{family}_dir")
    module = ExtractionModule(ModelSpec(str(folder)), layer_steer=layers[0], layer_context=layers[1])
    module.configure_model()
    items = _items(with_image=family != "llama", suffix=" Is it safe?", close_turn=True)
    items[1] = dataclasses.replace(items[1], suffix="")
    _check_equal(module, items)


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
    """Blocks past max(L*, L') never run; the prompt runs once through 0..max(L*, L') (batch B); with a
    suffix only the plain prompt's short tail runs again, through 0..L'; both completions run through 0..L*
    (batch 2B)."""
    steer, context = layers
    module = ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=steer, layer_context=context)
    module.configure_model()
    blocks = module.llm.model.layers
    seen: dict[int, list[tuple[int, int]]] = {index: [] for index in range(len(blocks))}
    handles = [
        block.register_forward_hook(lambda _m, args, _out, index=index: seen[index].append(tuple(args[0].shape[:2])))
        for index, block in enumerate(blocks)
    ]
    items = _items(with_image=False, suffix=suffix)
    try:
        module.features(items)
    finally:
        for handle in handles:
            handle.remove()
    inputs = module.encode(items)
    b, prompt = inputs.prefix["input_ids"].shape
    completion = inputs.completions.shape[1]
    tail = 0 if inputs.context is None else inputs.context.ids.shape[1]
    assert bool(tail) == bool(suffix) and tail < prompt / 3  # the plain prompt is not encoded again
    expected = {
        index: [(b, prompt)] * (index <= max(steer, context))
        + [(b, tail)] * bool(suffix and index <= context)
        + [(2 * b, completion)] * (index <= steer)
        for index in seen
    }
    assert seen == expected


@pytest.mark.parametrize("window", [8, 4096])
def test_sliding_window_model_with_a_suffix_equals_full_forwards(tiny_llama_dir, tmp_path, window):
    """Models with sliding-window layers (Mistral v0.1, Gemma 2/3): the context tail's pass evicts positions
    and counts them, so the cache is restored to the prompt's afterwards, not cut (a window shorter than the
    prompts, and one longer)."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=window,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    MistralForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    module = ExtractionModule(ModelSpec(str(tmp_path)), layer_steer=1, layer_context=2)
    module.configure_model()
    items = _items(with_image=False, suffix=" Is it safe?")
    items[1] = dataclasses.replace(items[1], suffix="")
    _check_equal(module, items)
    from l2s_lightning.extraction.forward import prefix_shared_features, tail_shares_cache

    inputs = module.encode(items)
    assert tail_shares_cache(module.llm, inputs) == (window == 4096)  # window 8: h from the plain prompt's own pass
    if window == 8:
        with pytest.raises(ValueError, match="sliding window of 8 positions"):
            prefix_shared_features(module.llm, inputs, 1, 2)


def test_only_attention_layers_share_the_cache_with_a_context_tail():
    """Layers with a recurrent state (linear attention in hybrid models) update it in place and cannot skip the
    suffix: h is then read with the plain prompt's own pass. Attention layers share the cache (a sliding window
    longer than prompt + tail)."""
    from types import SimpleNamespace

    from l2s_lightning.extraction.forward import ContextTail, ContrastInputs, tail_shares_cache

    ids = torch.zeros(2, 10, dtype=torch.long)
    tail = ContextTail(torch.zeros(2, 2, dtype=torch.long), torch.ones(2, dtype=torch.long), torch.ones(2, 10))
    inputs = ContrastInputs(
        {"input_ids": ids}, torch.zeros(4, 3, dtype=torch.long), torch.ones(4, dtype=torch.long), tail
    )
    hybrid = SimpleNamespace(
        config=SimpleNamespace(layer_types=["linear_attention", "full_attention"], sliding_window=None)
    )
    attention = SimpleNamespace(
        config=SimpleNamespace(layer_types=["full_attention", "sliding_attention"], sliding_window=64)
    )
    assert not tail_shares_cache(hybrid, inputs) and tail_shares_cache(attention, inputs)
    assert tail_shares_cache(hybrid, dataclasses.replace(inputs, context=None))  # no tail: nothing to skip


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_mean_readout_equals_full_forwards_and_averages_the_completion(family, request):
    """z_readout mean: the prefix-shared path equals three full forwards, and z is the difference of each
    completion's mean state at L* (checked by hand on one row)."""
    from l2s_lightning.extraction.forward import capture_layer_outputs

    folder = request.getfixturevalue(f"tiny_{family}_dir")
    module = ExtractionModule(ModelSpec(str(folder)), layer_steer=1, layer_context=2, z_readout="mean")
    module.configure_model()
    items = _items(with_image=family != "llama")
    _check_equal(module, items)
    _, z_mean = module.features(items)
    module.z_readout = "last"
    _, z_last = module.features(items)
    assert not torch.allclose(z_mean, z_last)

    inputs = module.encode(items[:1])
    prefix = {k: v for k, v in inputs.prefix.items()}
    sides = []
    for row in (0, 1):
        completion = inputs.completions[row, : inputs.completion_lengths[row]]
        with capture_layer_outputs(module.llm, [1]) as captured, torch.no_grad():
            module.llm(**append_tokens(prefix, completion[None]), use_cache=False)
        sides.append(captured[1][0, -len(completion) :].mean(0))
    torch.testing.assert_close(z_mean[0], (sides[0] - sides[1]).float(), atol=ATOL, rtol=RTOL)


def test_unknown_readout_is_refused(tiny_llama_dir):
    with pytest.raises(L2SInputError, match="z_readout='first'"):
        ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=1, layer_context=1, z_readout="first")
