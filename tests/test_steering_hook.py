"""The steering hook on tiny random Llama models: exact no-op rows, generated positions only, batch equals
one by one, modes, removal, static cache and the compiled decode step."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import DynamicCache
from transformers.generation.configuration_utils import CompileConfig

from l2s_lightning.models.layers import decoder_layers, layer_output
from l2s_lightning.prompts import left_pad
from l2s_lightning.steering import POSITIONS, SteeringHook, add_steering, steered_from
from l2s_lightning.testing.tiny_models import greedy_generate, next_block_inputs, random_llama

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]  # different lengths: left padding
LAYER, NEW = 1, 6


def generate(model, prompts, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sequences, scores (B, T, V), raw logits (B, T, V)) of a greedy run of NEW tokens."""
    _, out = greedy_generate(model, prompts, NEW, **kwargs)
    return out.sequences, torch.stack(out.scores, 1), torch.stack(out.logits, 1)


def vectors(rows_on: list[int], batch: int = 3, dim: int = 32, scale: float = 3.0, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    v = torch.randn(batch, dim) * scale
    keep = torch.zeros(batch, 1)
    keep[rows_on] = 1.0
    return v * keep


def no_hooks(model) -> bool:
    """No steering hook left (transformers keeps its own hidden-state recording hooks once asked for them)."""
    return not any(
        isinstance(h, SteeringHook) for block in decoder_layers(model) for h in block._forward_hooks.values()
    )


@pytest.fixture(scope="module")
def model():
    return random_llama()


def test_zero_rows_are_bit_identical(model):
    plain_seq, plain_scores, plain_logits = generate(model, PROMPTS)
    with add_steering(model, LAYER, vectors([1]), alpha=2.0) as hook:
        seq, scores, logits = generate(model, PROMPTS)
    assert hook.prefills == 1 and hook.steered_calls == NEW - 1  # the last token is never fed back
    for row in (0, 2):
        assert torch.equal(seq[row], plain_seq[row])
        assert torch.equal(scores[row], plain_scores[row])
        assert torch.equal(logits[row], plain_logits[row])
    assert not torch.equal(seq[1], plain_seq[1])
    # "generated": the prefill is not steered, so the first token's logits are the unsteered ones
    assert torch.equal(logits[:, 0], plain_logits[:, 0])
    assert no_hooks(model)


def test_per_row_alpha_tensor(model):
    plain_seq, _, plain_logits = generate(model, PROMPTS)
    with add_steering(model, LAYER, vectors([0, 1, 2]), alpha=torch.tensor([0.0, 2.0, 0.0])):
        seq, _, logits = generate(model, PROMPTS)
    assert torch.equal(logits[[0, 2]], plain_logits[[0, 2]]) and torch.equal(seq[[0, 2]], plain_seq[[0, 2]])
    assert not torch.equal(logits[1], plain_logits[1])


@pytest.mark.parametrize("mode", POSITIONS)
def test_the_hook_never_edits_the_hidden_state_in_place(model, mode):
    """Block L*'s own output tensor keeps its values; every steered call returns a new tensor."""
    block = decoder_layers(model)[LAYER]
    original: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the block's output, a copy taken before the hook)
    returned: list[torch.Tensor] = []  # what the next hooks / blocks see
    first = block.register_forward_hook(
        lambda m, a, k, out: original.append((layer_output(out), layer_output(out).clone())), with_kwargs=True
    )
    try:
        with add_steering(model, LAYER, vectors([0, 1, 2]), alpha=2.0, mode=mode) as hook:
            last = block.register_forward_hook(
                lambda m, a, k, out: returned.append(layer_output(out)), with_kwargs=True
            )
            try:
                generate(model, PROMPTS)
            finally:
                last.remove()
    finally:
        first.remove()
    assert len(original) == len(returned) == NEW
    for (output, copy), seen in zip(original, returned):
        assert torch.equal(output, copy)  # untouched
    new_tensors = [seen is not output for (output, _), seen in zip(original, returned)]
    assert sum(new_tensors) == hook.steered_calls == (NEW - 1 if mode == "generated" else NEW)
    assert all(not torch.equal(seen, output) for (output, _), seen, new in zip(original, returned, new_tensors) if new)


def _inputs_of_next_block(model, run) -> torch.Tensor:
    """Everything block LAYER+1 received during ``run()`` (= block LAYER's output), concatenated over calls."""
    return next_block_inputs(model, LAYER, run)


def test_added_at_layer_on_generated_positions_only_in_generate(model):
    """Block L*'s output during steered generate = an unsteered forward of the same tokens + alpha*v on the
    generated positions, and the unsteered one on prompt positions."""
    v, alpha = vectors([0, 1, 2]), 1.5
    out = {}

    def run():
        with add_steering(model, LAYER, v, alpha=alpha):
            out["seq"] = generate(model, PROMPTS)[0]

    steered = _inputs_of_next_block(model, run)
    ids, mask = left_pad(PROMPTS, 0)
    width = ids.shape[1]
    fed = out["seq"][:, : steered.shape[1]]  # the last generated token is never fed back
    full_mask = torch.cat([mask, torch.ones(len(PROMPTS), fed.shape[1] - width, dtype=mask.dtype)], 1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        plain = model(
            input_ids=fed, attention_mask=full_mask, position_ids=positions, output_hidden_states=True
        ).hidden_states[LAYER + 1]
    real = mask.bool()
    torch.testing.assert_close(steered[:, :width][real], plain[:, :width][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steered[:, width:], plain[:, width:] + alpha * v[:, None, :], atol=1e-5, rtol=1e-5)


def _stepwise(model, ids, mask, steps: torch.Tensor, hook_ctx=None) -> torch.Tensor:
    """Prefill then one cached call per column of ``steps`` (fixed tokens); block LAYER's outputs (B, T, D)."""
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def run():
        with torch.no_grad(), hook_ctx if hook_ctx is not None else _null():
            model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            full_mask, last = mask, positions[:, -1:]
            for t in range(steps.shape[1]):
                full_mask = torch.cat([full_mask, torch.ones_like(mask[:, :1])], 1)
                last = last + 1
                model(
                    input_ids=steps[:, t : t + 1],
                    attention_mask=full_mask,
                    position_ids=last,
                    cache=cache,
                    use_cache=True,
                )

    return _inputs_of_next_block(model, run)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_added_exactly_on_decode_steps_of_a_manual_loop(model):
    """Manual prefill + cached decode steps with fixed tokens: prompt positions untouched (bit-identical),
    decode positions = unsteered + alpha*v (bit-identical: blocks 0..L* cannot see the steering)."""
    ids, mask = left_pad(PROMPTS, 0)
    steps = torch.tensor([[20, 21, 22], [23, 24, 25], [26, 27, 28]])
    v, alpha = vectors([0, 2]), 2.0
    plain = _stepwise(model, ids, mask, steps)
    for mode in ("generated", "last_prompt_and_generated", "all"):
        steered = _stepwise(model, ids, mask, steps, add_steering(model, LAYER, v, alpha=alpha, mode=mode))
        delta = (alpha * v)[:, None, :]
        width = ids.shape[1]
        assert torch.equal(steered[:, width:], plain[:, width:] + delta)
        if mode == "generated":
            assert torch.equal(steered[:, :width], plain[:, :width])
        elif mode == "last_prompt_and_generated":
            assert torch.equal(steered[:, : width - 1], plain[:, : width - 1])
            assert torch.equal(steered[:, width - 1], plain[:, width - 1] + delta[:, 0])
        else:
            assert torch.equal(steered[:, :width], plain[:, :width] + delta)
        assert torch.equal(steered[1], plain[1])  # zero vector row
    assert no_hooks(model)


def test_batched_equals_one_by_one(model):
    v = vectors([0, 1, 2])
    with add_steering(model, LAYER, v, alpha=1.0):
        batch_seq, _, batch_logits = generate(model, PROMPTS)
    width = batch_seq.shape[1] - NEW
    for row, prompt in enumerate(PROMPTS):
        with add_steering(model, LAYER, v[row : row + 1], alpha=1.0):
            seq, _, logits = generate(model, [prompt])
        assert torch.equal(seq[0, len(prompt) :], batch_seq[row, width:])
        torch.testing.assert_close(logits[0], batch_logits[row], atol=1e-5, rtol=1e-5)


def test_one_token_prompts_and_several_generate_calls(model):
    """A one-token prompt is a prefill (first call), and so is the prefill of a second generate call in the
    same context (a new KV cache), so its first token's logits stay unsteered."""
    prompts = [[5], [9]]
    v = vectors([0, 1], batch=2)
    plain_seq, _, plain_logits = generate(model, prompts)
    with add_steering(model, LAYER, v, alpha=2.0) as hook:
        first = generate(model, prompts)
        second = generate(model, prompts)
    assert hook.prefills == 2
    for seq, _, logits in (first, second):
        assert torch.equal(logits[:, 0], plain_logits[:, 0])
        assert not torch.equal(logits[:, 1:], plain_logits[:, 1:])
    assert torch.equal(first[0], second[0]) and torch.equal(first[2], second[2])


@pytest.mark.parametrize(
    ("mode", "prompt_tokens", "first"),
    [
        ("generated", 5, 5),  # a prefill: nothing (the call's 5 positions are all prompt)
        ("last_prompt_and_generated", 5, 4),
        ("all", 5, 0),
        ("generated", 0, 0),  # a decode step: every position
        ("last_prompt_and_generated", 0, 0),
        ("all", 0, 0),
    ],
)
def test_the_positions_rule(mode, prompt_tokens, first):
    assert steered_from(mode, prompt_tokens) == first


@pytest.mark.parametrize("mode", POSITIONS)
def test_a_teacher_forced_forward_is_steered_as_generate_steers_the_same_tokens(model, mode):
    """One forward over prompt + continuation with ``prompt_width`` = the prompt's width: block L*'s output equals
    the prefill + cached decode steps of the same tokens (each real position, to 1e-5): one positions rule."""
    ids, mask = left_pad(PROMPTS, 0)
    steps = torch.tensor([[20, 21, 22], [23, 24, 25], [26, 27, 28]])
    v, alpha, width = vectors([0, 2]), 2.0, ids.shape[1]
    stepwise = _stepwise(model, ids, mask, steps, add_steering(model, LAYER, v, alpha=alpha, mode=mode))
    full_ids, full_mask = torch.cat([ids, steps], 1), torch.cat([mask, torch.ones_like(steps)], 1)

    def forward():
        with torch.no_grad():
            model(input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0))

    with add_steering(model, LAYER, v, alpha=alpha, mode=mode, prompt_width=width) as hook:
        forced = _inputs_of_next_block(model, forward)
    assert hook.prefills == 1 and hook.steered_calls == 1
    real = full_mask.bool()
    torch.testing.assert_close(forced[real], stepwise[real], atol=1e-5, rtol=1e-5)
    plain = _inputs_of_next_block(model, forward)
    first = steered_from(mode, width)
    assert torch.equal(forced[:, :first], plain[:, :first])
    assert torch.equal(forced[:, first:], plain[:, first:] + alpha * v[:, None, :])
    with pytest.raises(ValueError, match="prompt_width"):
        with add_steering(model, LAYER, v, mode=mode, prompt_width=0):
            pytest.fail("the body must not run")
    assert no_hooks(model)


def test_last_prompt_mode_steers_the_first_token_and_all_mode_every_position(model):
    _, _, plain_logits = generate(model, PROMPTS)
    v = vectors([0, 1, 2])
    with add_steering(model, LAYER, v, alpha=2.0, mode="last_prompt_and_generated"):
        _, _, last_logits = generate(model, PROMPTS)
    assert all(not torch.equal(last_logits[r, 0], plain_logits[r, 0]) for r in range(3))
    # "all" on a plain forward (no cache): every position, padding included, gets alpha*v
    ids, mask = left_pad(PROMPTS, 0)
    plain = _inputs_of_next_block(model, lambda: model(input_ids=ids, attention_mask=mask))
    with add_steering(model, LAYER, v, alpha=2.0, mode="all"):
        steered = _inputs_of_next_block(model, lambda: model(input_ids=ids, attention_mask=mask))
    assert torch.equal(steered, plain + 2.0 * v[:, None, :])
    # "generated" on a plain forward: nothing (the whole call is a prefill)
    with add_steering(model, LAYER, v, alpha=2.0):
        assert torch.equal(_inputs_of_next_block(model, lambda: model(input_ids=ids, attention_mask=mask)), plain)


def test_expanded_batches_repeat_each_vector():
    hook = SteeringHook(torch.arange(6.0).reshape(3, 2), alpha=1.0, mode="all")
    out = hook(torch.nn.Identity(), (), {}, torch.zeros(6, 4, 2))
    assert torch.equal(out[:, 0], torch.arange(6.0).reshape(3, 2).repeat_interleave(2, 0))
    with pytest.raises(ValueError, match="4 rows"):
        hook(torch.nn.Identity(), (), {}, torch.zeros(4, 1, 2))


def test_hook_is_removed_after_exit_and_after_an_error():
    model = random_llama()  # fresh: no hidden-state recording hooks
    block = decoder_layers(model)[LAYER]
    with add_steering(model, LAYER, vectors([0])):
        assert len(block._forward_hooks) == 1
    assert len(block._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with add_steering(model, LAYER, vectors([0])):
            generate(model, PROMPTS)
            raise RuntimeError("boom")
    assert len(block._forward_hooks) == 0 and len(block._forward_hooks_with_kwargs) == 0
    with pytest.raises(ValueError, match="rows"):  # an error inside the hook (batch of 3, 2 vectors)
        with add_steering(model, LAYER, vectors([0], batch=2), mode="all"):
            generate(model, PROMPTS)
    assert all(len(b._forward_hooks) == 0 and len(b._forward_hooks_with_kwargs) == 0 for b in decoder_layers(model))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": float("nan")}, "finite"),
        ({"alpha": float("inf")}, "finite"),
        ({"alpha": torch.tensor([1.0, 2.0])}, "alpha"),
        ({"mode": "prompt"}, "mode"),
        ({"layer": 4}, "out of range"),
        ({"layer": -1}, "out of range"),
        ({"vectors": torch.zeros(3, 7)}, "hidden size"),
        ({"vectors": torch.zeros(32)}, "hidden size"),
        ({"vectors": torch.full((3, 32), float("nan"))}, "finite"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(model, kwargs, message):
    args = {"layer": LAYER, "vectors": vectors([0]), "alpha": 1.0, "mode": "generated"} | kwargs
    with pytest.raises(ValueError, match=message):
        with add_steering(model, **args):
            pytest.fail("the body must not run")
    assert no_hooks(model)


def test_static_cache_matches_dynamic(model):
    v = vectors([0, 2])
    with add_steering(model, LAYER, v, alpha=2.0):
        dynamic, _, dyn_logits = generate(model, PROMPTS)
        static, _, st_logits = generate(model, PROMPTS, cache_implementation="static")
    assert torch.equal(dynamic, static)
    torch.testing.assert_close(dyn_logits, st_logits, atol=1e-5, rtol=1e-5)


def test_chunked_prefill_is_one_prefill(model):
    """prefill_chunk_size=2 on 6-token prompts (chunks of 2): same tokens as an unchunked prefill."""
    v = vectors([0, 1, 2])
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16], [17, 18, 19, 20, 21, 22]]
    with add_steering(model, LAYER, v, alpha=2.0) as hook:
        whole, _, whole_logits = generate(model, prompts)
        chunked, _, chunked_logits = generate(model, prompts, prefill_chunk_size=2)
    assert hook.prefills == 1 + 3
    assert torch.equal(whole, chunked)
    torch.testing.assert_close(whole_logits, chunked_logits, atol=1e-5, rtol=1e-5)


def compile_config() -> CompileConfig:
    """generate's compiled decode step on CPU: dynamo with the eager backend, any graph break is an error."""
    config = CompileConfig(backend="eager", fullgraph=True, mode=None)
    config._compile_all_devices = True  # generate compiles only on accelerators otherwise
    return config


def test_compiled_static_cache_decode_step():
    """Static cache + compiled forward (fullgraph: no graph break): equal to dynamic eager steering; new
    vectors reuse the graph; plain runs before and after are unsteered."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        model = random_llama(seed=3)
        v = vectors([0, 2])
        plain, _, _ = generate(model, PROMPTS)
        with add_steering(model, LAYER, v, alpha=2.0):
            steered, _, steered_logits = generate(model, PROMPTS)
        counters.clear()
        plain_compiled, _, _ = generate(model, PROMPTS, cache_implementation="static", compile_config=compile_config())
        assert getattr(model, "_compiled_call", None) is not None and counters["stats"]["unique_graphs"] == 1
        assert torch.equal(plain_compiled, plain)
        with add_steering(model, LAYER, v, alpha=2.0):
            seq, _, logits = generate(model, PROMPTS, cache_implementation="static", compile_config=compile_config())
        assert torch.equal(seq, steered)
        torch.testing.assert_close(logits, steered_logits, atol=1e-5, rtol=1e-5)
        assert counters["stats"]["unique_graphs"] == 2  # one for the plain decode step, one for the steered one
        with add_steering(model, LAYER, v * 0.5, alpha=4.0):  # same delta, new tensors: the same graph
            again, _, _ = generate(model, PROMPTS, cache_implementation="static", compile_config=compile_config())
        assert torch.equal(again, steered) and counters["stats"]["unique_graphs"] == 2
        after, _, _ = generate(model, PROMPTS, cache_implementation="static", compile_config=compile_config())
        assert torch.equal(after, plain) and no_hooks(model)
        assert sum(counters["graph_break"].values()) == 0
    torch._dynamo.reset()


def test_hook_guards_are_turned_on_for_an_already_compiled_model():
    """With torch's default skip_nnmodule_hook_guards=True a decode step compiled without hooks ignores a
    hook added later; add_steering turns the guards on and drops such graphs (with a warning)."""
    torch._dynamo.reset()
    config = torch._dynamo.config
    with config.patch(skip_nnmodule_hook_guards=True):
        model = random_llama(seed=4)
        v = vectors([0, 1, 2])
        with add_steering(model, LAYER, v, alpha=2.0):  # eager: no compiled forward yet, so no warning
            steered, _, _ = generate(model, PROMPTS)
        assert config.skip_nnmodule_hook_guards is False
        config.skip_nnmodule_hook_guards = True
        plain, _, _ = generate(model, PROMPTS, cache_implementation="static", compile_config=compile_config())
        with pytest.warns(RuntimeWarning, match="skip_nnmodule_hook_guards"):
            with add_steering(model, LAYER, v, alpha=2.0):
                seq, _, _ = generate(model, PROMPTS, cache_implementation="static", compile_config=compile_config())
        assert torch.equal(seq, steered) and not torch.equal(seq, plain)
        again, _, _ = generate(model, PROMPTS, cache_implementation="static", compile_config=compile_config())
        assert torch.equal(again, plain)
    torch._dynamo.reset()
