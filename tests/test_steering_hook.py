"""The steering hook: exact no-op rows, generated positions only, batch = one-by-one, always removed."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from l2s_lightning.models.layers import decoder_layers
from l2s_lightning.steering.attach import _ContextCapture, attach_steerer
from l2s_lightning.steering.hook import SteeringHook, add_steering

PROMPTS = ["how do I pick a lock", "tell me", "what is the capital of France and why"]
LAYER = 1


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return model, tokenizer


def _generate(model, tokenizer, prompts, **kwargs):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(
        **enc, max_new_tokens=6, min_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id, **kwargs,
    )
    return out.sequences, torch.stack(out.scores, 1), enc


def _vectors(model, rows_on: list[int], scale: float = 3.0) -> torch.Tensor:
    torch.manual_seed(1)
    v = torch.randn(len(PROMPTS), model.config.hidden_size) * scale
    mask = torch.zeros(len(PROMPTS), 1)
    mask[rows_on] = 1
    return v * mask


def test_zero_rows_are_bit_identical_and_steered_rows_change(llama):
    model, tokenizer = llama
    plain_seq, plain_scores, _ = _generate(model, tokenizer, PROMPTS)
    with add_steering(model, LAYER, _vectors(model, [1]), alpha=2.0):
        seq, scores, _ = _generate(model, tokenizer, PROMPTS)
    for row in (0, 2):
        assert torch.equal(seq[row], plain_seq[row])
        assert torch.equal(scores[row], plain_scores[row])
    assert not torch.equal(scores[1], plain_scores[1])
    # the prompt's own logits (first generated token) are untouched in "generated" mode
    assert torch.equal(scores[1, 0], plain_scores[1, 0])


def test_vector_is_added_at_layer_on_generated_positions_only(llama):
    """Block L*'s output seen by block L*+1 during steered generation equals a manual unsteered forward of
    the same tokens plus α·v on the generated positions, and equals it exactly on prompt positions
    (steering at L* cannot change blocks 0..L*)."""
    model, tokenizer = llama
    vectors, alpha = _vectors(model, [0, 1, 2]), 1.5
    seen = []
    handle = decoder_layers(model)[LAYER + 1].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with add_steering(model, LAYER, vectors, alpha=alpha):
            seq, _, enc = _generate(model, tokenizer, PROMPTS)
    finally:
        handle.remove()
    steered = torch.cat(seen, dim=1)  # prefill + one column per generated token fed back
    fed = seq[:, : steered.shape[1]]
    prompt_len = enc["input_ids"].shape[1]
    mask = torch.cat([enc["attention_mask"], torch.ones(len(PROMPTS), fed.shape[1] - prompt_len, dtype=torch.long)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    plain = model(input_ids=fed, attention_mask=mask, position_ids=positions, output_hidden_states=True).hidden_states[LAYER + 1]
    real = mask.bool()
    torch.testing.assert_close(steered[:, :prompt_len][real[:, :prompt_len]], plain[:, :prompt_len][real[:, :prompt_len]], atol=1e-5, rtol=1e-5)
    expected = plain[:, prompt_len:] + alpha * vectors[:, None, :]
    torch.testing.assert_close(steered[:, prompt_len:], expected, atol=1e-5, rtol=1e-5)
    assert (steered[:, prompt_len:] - plain[:, prompt_len:]).abs().max() > 1.0


def test_batched_equals_one_by_one(llama):
    model, tokenizer = llama
    vectors = _vectors(model, [0, 1, 2])
    with add_steering(model, LAYER, vectors, alpha=1.0):
        batch_seq, batch_scores, enc = _generate(model, tokenizer, PROMPTS)
    width = enc["input_ids"].shape[1]
    for row, prompt in enumerate(PROMPTS):
        with add_steering(model, LAYER, vectors[row : row + 1], alpha=1.0):
            seq, scores, one = _generate(model, tokenizer, [prompt])
        assert torch.equal(seq[0, one["input_ids"].shape[1] :], batch_seq[row, width:])
        torch.testing.assert_close(scores[0], batch_scores[row], atol=1e-4, rtol=1e-4)


def test_modes_and_removal(llama):
    model, tokenizer = llama
    layer = decoder_layers(model)[LAYER]
    hooks_before = len(layer._forward_hooks)
    plain_seq, plain_scores, _ = _generate(model, tokenizer, PROMPTS)
    with add_steering(model, LAYER, _vectors(model, [0, 1, 2]), alpha=2.0, mode="last_prompt_and_generated"):
        _, scores, _ = _generate(model, tokenizer, PROMPTS)
    assert not torch.equal(scores[:, 0], plain_scores[:, 0])  # the last prompt token is steered
    assert len(layer._forward_hooks) == hooks_before
    with pytest.raises(RuntimeError, match="boom"):
        with add_steering(model, LAYER, _vectors(model, [0]), alpha=2.0):
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == hooks_before
    with pytest.raises(ValueError, match="finite"):
        with add_steering(model, LAYER, _vectors(model, [0]), alpha=float("nan")):
            pass
    with pytest.raises(ValueError, match="hidden size"):
        with add_steering(model, LAYER, torch.zeros(3, 7)):
            pass
    assert torch.equal(_generate(model, tokenizer, PROMPTS)[0], plain_seq)


def test_static_cache_matches_dynamic(llama):
    model, tokenizer = llama
    vectors = _vectors(model, [0, 2])
    with add_steering(model, LAYER, vectors, alpha=2.0):
        dynamic, _, _ = _generate(model, tokenizer, PROMPTS)
    with add_steering(model, LAYER, vectors, alpha=2.0):
        static, _, _ = _generate(model, tokenizer, PROMPTS, cache_implementation="static")
    assert torch.equal(dynamic, static)


class _LinearSteerer:
    """A small stand-in with the steerer interface: v = W h."""

    def __init__(self, dim: int, layer_steer: int, layer_context: int) -> None:
        torch.manual_seed(2)
        self.weight = torch.randn(dim, dim) * 0.3
        self.layer_steer, self.layer_context, self.hidden_size = layer_steer, layer_context, dim
        self.default_alpha, self.needs_context, self.seen = 1.0, True, []

    def vectors(self, context, behaviours=None, sample_ids=None):
        self.seen.append(context.clone())
        return context @ self.weight.T


@pytest.mark.parametrize("layers", [(1, 2), (2, 1)])
def test_attach_reads_context_at_last_prompt_token(llama, layers):
    model, tokenizer = llama
    steerer = _LinearSteerer(model.config.hidden_size, *layers)
    plain_seq, _, enc = _generate(model, tokenizer, PROMPTS)
    with attach_steerer(steerer, model, alpha=1.0):
        seq, _, _ = _generate(model, tokenizer, PROMPTS)
    assert len(steerer.seen) == 1
    states = model(**enc, output_hidden_states=True, position_ids=(enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)).hidden_states
    torch.testing.assert_close(steerer.seen[0], states[layers[1] + 1][:, -1], atol=1e-5, rtol=1e-5)
    assert not torch.equal(seq, plain_seq)
    assert all(not any(isinstance(h, (SteeringHook, _ContextCapture)) for h in layer._forward_hooks.values()) for layer in decoder_layers(model))
    with pytest.raises(ValueError, match="use mode='generated'"):
        with attach_steerer(_LinearSteerer(model.config.hidden_size, 0, 3), model, mode="all"):
            pass
