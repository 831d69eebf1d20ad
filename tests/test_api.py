"""The Python API (`l2s_lightning.api`): train_steerer on a model already loaded, Steerer.from_vector, GPT-2-style
layer finding and the input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2s_lightning.api import Example, train_steerer
from l2s_lightning.data.items import PromptItem
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.models.layers import (
    decoder_layers,
    layer_output,
    num_decoder_layers,
    replace_layer_output,
    set_decoder_layers,
    truncated_decoder,
)
from l2s_lightning.models.loading import LoadedModel, ModelSpec, load_model
from l2s_lightning.steerer import Steerer
from l2s_lightning.steering import SteeringHook
from l2s_lightning.testing.tiny_models import CHATML_TEMPLATE, build_tokenizer, next_block_inputs, random_llama

EXAMPLES = [
    ("How can I pick a lock?", "I'm sorry, but I can't", "Sure, here is how"),
    ("Tell me about tax law.", "Please consult a lawyer", "The answer is"),
    ("What is the capital of France?", "I cannot assist", "Paris is"),
    ("How do I make money fast?", "Please speak with an expert", "Here are the steps"),
]
QUESTION = [{"role": "user", "content": "Tell me how to find a doctor."}]


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    return load_model(ModelSpec(str(tiny_llama_dir)))


def generate(model, tokenizer, new_tokens: int = 8) -> torch.Tensor:
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model.generate(
        **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
    )


def no_hooks_left(model) -> bool:
    return not any(block._forward_hooks for block in decoder_layers(model))


def test_mean_is_the_mean_z_of_the_extraction_path(tiny_llama_dir, loaded):
    """method='mean' equals the mean over the examples of z from ExtractionModule (the `l2s extract` path) run on
    prompt rows built by hand; tuples, mappings and Examples are the same examples."""
    module = ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=2, layer_context=2)
    module.configure_model()
    rows = [
        PromptItem(f"r{i}", prompt, "c", "b", pos, neg, "", False, "", "train", "jsonl")
        for i, (prompt, pos, neg) in enumerate(EXAMPLES)
    ]
    _, z = module.features(rows)
    steerer = train_steerer(loaded.model, loaded.tokenizer, EXAMPLES, layer=2, method="mean", alpha=3.0)
    assert (steerer.method, steerer.layer_steer, steerer.hidden_size, steerer.default_alpha) == ("mean", 2, 64, 3.0)
    assert steerer.features == "" and steerer.stats["n_rows"] == len(EXAMPLES)
    torch.testing.assert_close(steerer.tensors["mean"], z.mean(0), atol=1e-6, rtol=0)
    mappings = [{"prompt": p, "positive_completion": pos, "negative": neg} for p, pos, neg in EXAMPLES]
    objects = [Example(*example) for example in EXAMPLES]
    for same in (mappings, objects):
        again = train_steerer(loaded.model, loaded.tokenizer, same, layer=2, method="mean", alpha=3.0)
        assert again.digest == steerer.digest


def test_l2s_is_trained_deterministically_and_steers_generation(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    steerer = train_steerer(model, tokenizer, EXAMPLES, layer=2, context_layer=1, epochs=3, seed=1, alpha=30.0)
    assert (steerer.method, steerer.layer_steer, steerer.layer_context) == ("l2s", 2, 1)
    assert steerer.info["epochs"] == 3 and steerer.info["rows"] == len(EXAMPLES) - 1  # one held out
    assert steerer.vectors(torch.randn(5, 64)).shape == (5, 64)
    again = train_steerer(model, tokenizer, EXAMPLES, layer=2, context_layer=1, epochs=3, seed=1, alpha=30.0)
    assert again.digest == steerer.digest
    assert torch.are_deterministic_algorithms_enabled() is False  # the fit's Trainer setting is undone
    plain = generate(model, tokenizer)
    with steerer.attach(model) as capture:
        steered = generate(model, tokenizer)
    assert capture.prefills == 1 and no_hooks_left(model)
    assert not torch.equal(steered, plain)


def test_from_vector_equals_adding_the_vector_at_its_layer():
    """Steerer.from_vector(v, L).attach(mode="all") is a forward hook adding α·v to block L's output: same inputs
    to block L+1 in a forward, same tokens and logits in a generation."""
    model = random_llama()
    torch.manual_seed(4)
    vector = torch.randn(32) * 3
    steerer = Steerer.from_vector(vector, layer=1, alpha=2.0)
    assert (steerer.method, steerer.layer_steer, steerer.default_alpha) == ("mean", 1, 2.0)
    ids = torch.tensor([[5, 6, 7, 8, 9]])

    def by_hook(_module, _args, output):
        return replace_layer_output(output, layer_output(output) + 2.0 * vector)

    def forward_and_generate():
        states = next_block_inputs(model, 1, lambda: model(input_ids=ids))
        out = model.generate(
            input_ids=ids,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        return states, out.sequences, torch.stack(out.logits, 1)

    plain_states, plain_sequences, _ = forward_and_generate()
    with steerer.attach(model, mode="all"):
        steered = forward_and_generate()
    handle = decoder_layers(model)[1].register_forward_hook(by_hook)
    try:
        expected = forward_and_generate()
    finally:
        handle.remove()
    torch.testing.assert_close(steered[0], expected[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(steered[1], expected[1])
    torch.testing.assert_close(steered[2], expected[2], atol=1e-5, rtol=1e-5)
    assert not torch.equal(steered[0], plain_states)
    with pytest.raises(L2SInputError, match=r"vector must be one \(D,\) vector, got shape \(2, 32\)"):
        Steerer.from_vector(torch.zeros(2, 32), layer=1)
    with pytest.raises(L2SInputError, match="does not fit the model's hidden size"):
        Steerer.from_vector(torch.ones(8), layer=1).attach(model).__enter__()


def tiny_gpt2():
    """A tiny random GPT-2 (blocks at ``transformer.h``) and a ChatML tokenizer without a pad token, as GPT-2's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(CHATML_TEMPLATE, eos="<|im_end|>")
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=3,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval(), tokenizer


def test_gpt2_layers_are_found_and_extraction_and_steering_work():
    model, tokenizer = tiny_gpt2()
    assert decoder_layers(model) is model.transformer.h and num_decoder_layers(model) == 3
    with truncated_decoder(model, 2):
        assert len(model.transformer.h) == 2
    assert len(model.transformer.h) == 3
    # P2S on GPT-2: the prefix-shared forward equals three full forwards per example
    loaded = LoadedModel(model, None, tokenizer, ModelSpec("tiny-gpt2"), is_multimodal=False)
    module = ExtractionModule.of_loaded(loaded, layer_steer=1, layer_context=2)
    rows = [
        PromptItem(f"r{i}", p, "c", "b", pos, neg, "", False, "", "train", "jsonl")
        for i, (p, pos, neg) in enumerate(EXAMPLES)
    ]
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    h, z = module.features(rows)
    module.forward_style = "reference"
    h_ref, z_ref = module.features(rows)
    torch.testing.assert_close(h, h_ref, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(z, z_ref, atol=2e-4, rtol=1e-4)
    tokenizer.pad_token, tokenizer.padding_side = None, "right"
    # train_steerer pads on the left with EOS for the extraction only; the steerer steers generation
    steerer = train_steerer(model, tokenizer, EXAMPLES, layer=1, method="mean", alpha=20.0)
    assert (tokenizer.pad_token, tokenizer.padding_side) == (None, "right")
    torch.testing.assert_close(steerer.tensors["mean"], z.mean(0), atol=1e-5, rtol=1e-5)
    plain = generate(model, tokenizer)
    with steerer.attach(model) as capture:
        steered = generate(model, tokenizer)
    assert capture.prefills == 1 and capture.hook.steered_calls == 7  # the decode steps, cache passed positionally
    assert not torch.equal(steered, plain)


class Wrapped(nn.Module):
    """A model whose blocks no known layout names."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.core = inner
        self.config = inner.config

    def forward(self, **kwargs):
        return self.core(**kwargs)


def test_a_user_given_layers_path():
    model, _ = tiny_gpt2()
    wrapped = Wrapped(model)
    with pytest.raises(L2SInputError, match="set_decoder_layers"):
        decoder_layers(wrapped)
    with pytest.raises(L2SInputError, match="'core.transformer.x' of Wrapped is not a non-empty nn.ModuleList"):
        set_decoder_layers(wrapped, "core.transformer.x")
    set_decoder_layers(wrapped, "core.transformer.h")
    assert decoder_layers(wrapped) is model.transformer.h
    hook = SteeringHook(torch.ones(1, 32), alpha=1.0, mode="all")
    with truncated_decoder(wrapped, 1):
        assert len(model.transformer.h) == 1
    handle = hook.register(decoder_layers(wrapped)[2])
    try:
        wrapped(input_ids=torch.tensor([[5, 6, 7]]))
    finally:
        handle.remove()
    assert hook.steered_calls == 1


@pytest.mark.parametrize(
    "examples, kwargs, message",
    [
        (EXAMPLES[:1] + [("Why?", "", "No")], {}, r"examples\[1\]\.positive is empty"),
        ([("Why?", "Yes", "   ")], {}, r"examples\[0\]\.negative is empty"),
        ([("Why?", "Yes")], {}, r"examples\[0\] has 2 items; expected \(prompt, positive, negative\)"),
        ([{"prompt": "Why?", "positive": "Yes"}], {}, r"examples\[0\] has no \['negative'\]"),
        ([("Why?", 3, "No")], {}, r"examples\[0\]\.positive must be a string, got int"),
        ([], {}, "examples must be a non-empty list"),
        (EXAMPLES, {"layer": 9}, r"layer=9 is out of range: model .* has 4 decoder layers \(valid indices 0\.\.3"),
        (EXAMPLES, {"context_layer": -1}, r"context_layer=-1 is out of range"),
        (EXAMPLES, {"method": "p2s_oracle"}, r"method='p2s_oracle' must be one of \('l2s', 'mean', 'random'\)"),
        (EXAMPLES[:1], {}, "method='l2s' needs at least 2 examples"),
        (EXAMPLES, {"settings": {"hiden": 3}}, r"L2SSettings has no field\(s\) \['hiden'\]"),
    ],
)
def test_bad_input_is_one_line_naming_the_example_and_field(loaded, examples, kwargs, message):
    kwargs = {"layer": 1, **kwargs}
    with pytest.raises(L2SInputError, match=message) as err:
        train_steerer(loaded.model, loaded.tokenizer, examples, **kwargs)
    assert "\n" not in str(err.value)


def test_a_tokenizer_without_chat_template_is_refused():
    model, tokenizer = tiny_gpt2()
    tokenizer.chat_template = None
    with pytest.raises(L2SInputError, match=r"\w+ has no chat template: each prompt goes through it"):
        train_steerer(model, tokenizer, EXAMPLES, layer=1, method="mean")
