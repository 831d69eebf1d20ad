"""``steer_tokens`` = k on tiny random Llama models: only the positions producing generated tokens 1..k are steered
(the rule of ``steered_until``), checked against a manual greedy loop, per-call recordings and a teacher-forced
forward; None and k past the last token equal today's steering exactly; bad values and compiled decoding refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM
from transformers.generation.configuration_utils import CompileConfig

from l2s_lightning.errors import L2SInputError
from l2s_lightning.internals import cache_kwarg, layer_output, replace_layer_output
from l2s_lightning.models.layers import decoder_layers
from l2s_lightning.prompts import left_pad
from l2s_lightning.steering import (
    POSITIONS,
    SteeringHook,
    add_steering,
    attach_steerer,
    check_steer_tokens,
    steered_from,
    steered_until,
)
from l2s_lightning.testing.tiny_models import greedy_generate, next_block_inputs, random_llama

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]  # different lengths: left padding
LAYER, NEW, DIM, EOS = 1, 6, 32, 2


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return random_llama()


def vectors(batch: int = 3, scale: float = 3.0) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, DIM) * scale


def generate(model, prompts=PROMPTS, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(new tokens (B, NEW), raw logits (B, NEW, V)) of a greedy run of NEW tokens."""
    width, out = greedy_generate(model, prompts, NEW, **kwargs)
    return out.sequences[:, width:], torch.stack(out.logits, 1)


def steered_positions(mode: str, width: int, k: int | None) -> Callable[[int], bool]:
    """The rule as stated: absolute position p (prompt 0..W-1, generated token j at W+j-1) is steered when ``mode``
    steers it and it produces one of generated tokens 1..k (p + 1 < W + k, i.e. p produces token p - W + 2)."""
    first = {"generated": width, "last_prompt_and_generated": width - 1, "all": 0}[mode]
    return lambda p: p >= first and (k is None or p - width + 2 <= k)


def manual_greedy(model, delta: torch.Tensor, steered: Callable[[int], bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference without SteeringHook: prefill + one cached forward per token, a plain hook adding ``delta``
    (B, D) to block LAYER's output at the absolute positions ``steered`` picks; greedy with EOS barred."""
    ids, mask = left_pad(PROMPTS, 0)
    seen = {"positions": 0}

    def hook(module, args, output):
        hidden = layer_output(output)
        start, length = seen["positions"], hidden.shape[1]
        seen["positions"] += length
        on = torch.tensor([steered(start + i) for i in range(length)])[None, :, None]
        return replace_layer_output(output, torch.where(on, hidden + delta[:, None, :], hidden))

    cache = {cache_kwarg(model): DynamicCache(config=model.config)}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    tokens, logits = [], []
    handle = decoder_layers(model)[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache)
            full_mask, last = mask, positions[:, -1:]
            for step in range(NEW):
                logits.append(out.logits[:, -1])
                token = out.logits[:, -1].clone().index_fill_(1, torch.tensor([EOS]), -torch.inf).argmax(-1, True)
                tokens.append(token)
                if step == NEW - 1:
                    break
                full_mask, last = torch.cat([full_mask, torch.ones_like(mask[:, :1])], 1), last + 1
                out = model(input_ids=token, attention_mask=full_mask, position_ids=last, use_cache=True, **cache)
    finally:
        handle.remove()
    return torch.cat(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize(
    ("prompt_tokens", "k", "fed_before", "end"),
    [
        (5, None, 0, None),  # no limit
        (5, 3, 0, 7),  # a prefill of 5 prompt positions: up to the position of generated token 2 (produces token 3)
        (5, 1, 0, 5),  # only the last prompt position (produces token 1)
        (0, 3, 0, 2),  # decode step 1 (feeds token 1): steered
        (0, 3, 1, 1),  # decode step 2 (feeds token 2, produces token 3): steered
        (0, 3, 2, 0),  # decode step 3 (feeds token 3): not steered
        (0, 3, 7, 0),
    ],
)
def test_the_end_rule(prompt_tokens, k, fed_before, end):
    assert steered_until(prompt_tokens, k, fed_before) == end


@pytest.mark.parametrize("mode", POSITIONS)
@pytest.mark.parametrize("k", [2, 3])
def test_generate_steers_the_first_k_tokens_then_continues_unsteered(model, mode, k):
    """generate with steer_tokens=k equals a manual loop steering exactly the positions producing tokens 1..k, and
    its first k tokens' logits are those of unlimited steering, bit for bit."""
    v, alpha = vectors(), 2.0
    width = left_pad(PROMPTS, 0)[0].shape[1]
    with add_steering(model, LAYER, v, alpha=alpha, mode=mode, steer_tokens=k) as hook:
        tokens, logits = generate(model)
    assert hook.prefills == 1
    assert hook.steered_calls == (k - 1) + (mode != "generated")  # decode steps 1..k-1, and the prefill
    reference_tokens, reference_logits = manual_greedy(model, alpha * v, steered_positions(mode, width, k))
    assert torch.equal(tokens, reference_tokens)
    torch.testing.assert_close(logits, reference_logits, atol=1e-5, rtol=1e-5)
    with add_steering(model, LAYER, v, alpha=alpha, mode=mode):
        all_tokens, all_logits = generate(model)
    assert torch.equal(logits[:, :k], all_logits[:, :k])  # tokens 1..k: produced under the same steering
    assert torch.equal(tokens[:, :k], all_tokens[:, :k])
    assert not torch.equal(logits[:, k:], all_logits[:, k:])  # the rest: unsteered positions


@pytest.mark.parametrize("mode", POSITIONS)
def test_none_and_a_limit_past_the_last_token_equal_unlimited_steering(model, mode):
    v, alpha = vectors(), 2.0
    width = left_pad(PROMPTS, 0)[0].shape[1]
    with add_steering(model, LAYER, v, alpha=alpha, mode=mode):
        today = generate(model)
    for k in (None, NEW, NEW + 10):
        with add_steering(model, LAYER, v, alpha=alpha, mode=mode, steer_tokens=k):
            tokens, logits = generate(model)
        assert torch.equal(tokens, today[0]) and torch.equal(logits, today[1])
    reference_tokens, reference_logits = manual_greedy(model, alpha * v, steered_positions(mode, width, None))
    assert torch.equal(today[0], reference_tokens)
    torch.testing.assert_close(today[1], reference_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", POSITIONS)
def test_which_calls_receive_the_vector(model, mode):
    """Recorded per call of block L*: the prefill gets it at the mode's prompt positions, decode steps 1..k-1 at
    their token, later decode steps not at all."""
    k, v = 3, vectors()
    block = decoder_layers(model)[LAYER]
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the block's output, what the next block sees)
    before: list[torch.Tensor] = []
    first = block.register_forward_hook(lambda m, a, out: before.append(layer_output(out).clone()))
    try:
        with add_steering(model, LAYER, v, mode=mode, steer_tokens=k):
            last = block.register_forward_hook(lambda m, a, out: calls.append((before[-1], layer_output(out))))
            try:
                generate(model)
            finally:
                last.remove()
    finally:
        first.remove()
    width = left_pad(PROMPTS, 0)[0].shape[1]
    steered = [[i for i in range(out.shape[1]) if not torch.equal(out[:, i], plain[:, i])] for plain, out in calls]
    prefill = {"generated": [], "last_prompt_and_generated": [width - 1], "all": list(range(width))}[mode]
    assert steered == [prefill] + [[0]] * (k - 1) + [[]] * (NEW - k)  # NEW - 1 decode steps (the last token is not fed)


def _block_outputs(model, run) -> torch.Tensor:
    """Everything block LAYER+1 received during ``run()`` (= block LAYER's output), concatenated over calls."""
    return next_block_inputs(model, LAYER, run)


@pytest.mark.parametrize("mode", POSITIONS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_teacher_forced_forward_steers_the_positions_generate_would(model, mode, k):
    """Scoring's path (one forward over prompt + continuation, ``prompt_width``) with steer_tokens=k: block L*'s
    output equals the prefill + cached decode steps of the same tokens, and is plain + α·v exactly on
    [steered_from, steered_until)."""
    if mode == "generated" and k == 1:
        return  # refused (steers nothing)
    ids, mask = left_pad(PROMPTS, 0)
    steps = torch.tensor([[20, 21, 22, 23], [24, 25, 26, 27], [28, 29, 30, 31]])
    v, alpha, width = vectors(), 2.0, ids.shape[1]
    cache = {cache_kwarg(model): DynamicCache(config=model.config)}
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def stepwise() -> None:
        with torch.no_grad(), add_steering(model, LAYER, v, alpha=alpha, mode=mode, steer_tokens=k):
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache)
            full_mask, last = mask, positions[:, -1:]
            for t in range(steps.shape[1]):
                full_mask, last = torch.cat([full_mask, torch.ones_like(mask[:, :1])], 1), last + 1
                model(
                    input_ids=steps[:, t : t + 1], attention_mask=full_mask, position_ids=last, use_cache=True, **cache
                )

    full_ids, full_mask = torch.cat([ids, steps], 1), torch.cat([mask, torch.ones_like(steps)], 1)

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0))

    with add_steering(model, LAYER, v, alpha=alpha, mode=mode, prompt_width=width, steer_tokens=k) as hook:
        forced = _block_outputs(model, forward)
    assert hook.prefills == 1 and hook.steered_calls == 1
    real = full_mask.bool()
    torch.testing.assert_close(forced[real], _block_outputs(model, stepwise)[real], atol=1e-5, rtol=1e-5)
    plain = _block_outputs(model, forward)
    start, end = steered_from(mode, width), steered_until(width, k)
    assert end == width + k - 1
    assert torch.equal(forced[:, :start], plain[:, :start]) and torch.equal(forced[:, end:], plain[:, end:])
    assert torch.equal(forced[:, start:end], plain[:, start:end] + alpha * v[:, None, :])


class ConstantSteerer:
    """The steerer interface with fixed vectors (no context needed)."""

    layer_steer = layer_context = LAYER
    hidden_size, default_alpha, needs_context = DIM, 2.0, False

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v

    def vectors(self, context, behaviours=None, sample_ids=None):
        return self.v.to(context.device, context.dtype)


def test_attach_steerer_passes_the_limit_and_a_reused_hook_takes_each_calls(model):
    v, k = vectors(), 3
    with add_steering(model, LAYER, v, alpha=2.0, steer_tokens=k):
        limited = generate(model)
    with add_steering(model, LAYER, v, alpha=2.0):
        unlimited = generate(model)
    steerer = ConstantSteerer(v)
    with attach_steerer(steerer, model, steer_tokens=k) as capture:
        assert torch.equal(generate(model)[1], limited[1])
    hook = capture.hook
    assert hook.steer_tokens == k
    with attach_steerer(steerer, model, hook=hook):  # the same hook, re-armed without a limit
        assert torch.equal(generate(model)[1], unlimited[1])
    assert hook.steer_tokens is None
    with attach_steerer(steerer, model, hook=hook, steer_tokens=k):
        assert torch.equal(generate(model)[1], limited[1])


@pytest.mark.parametrize(
    ("k", "mode", "message"),
    [
        (0, "generated", "steer_tokens=0 must be a whole number of at least 1"),
        (-2, "all", "steer_tokens=-2 must be"),
        (2.0, "all", "steer_tokens=2.0 must be"),
        (True, "all", "steer_tokens=True must be"),
        ("3", "all", "steer_tokens='3' must be"),
        (1, "generated", "steers nothing"),
    ],
)
def test_bad_limits_are_refused_before_anything_runs(model, k, mode, message):
    with pytest.raises(L2SInputError, match=message):
        check_steer_tokens(k, mode)
    with pytest.raises(L2SInputError, match=message):
        SteeringHook(None, 1.0, mode, steer_tokens=k)
    with pytest.raises(L2SInputError, match=message):
        with add_steering(model, LAYER, vectors(), mode=mode, steer_tokens=k):
            pytest.fail("the body must not run")
    with pytest.raises(L2SInputError, match=message):
        with attach_steerer(ConstantSteerer(vectors()), model, mode=mode, steer_tokens=k):
            pytest.fail("the body must not run")
    with pytest.raises(L2SInputError, match=message):
        SteeringHook(None, 1.0, "all").rearm(1.0, mode, k)  # type: ignore[arg-type]
    assert all(not block._forward_hooks for block in decoder_layers(model))
    check_steer_tokens(1, "last_prompt_and_generated")  # the last prompt position produces token 1


def test_a_compiled_decode_step_refuses_the_limit():
    """Static cache + compiled decode step (fullgraph): the traced hook raises instead of steering wrongly."""
    torch._dynamo.reset()
    config = CompileConfig(backend="eager", fullgraph=True, mode=None)
    config._compile_all_devices = True  # generate compiles only on accelerators otherwise
    try:
        with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
            model = random_llama(seed=3)
            with pytest.raises(Exception, match="steer_tokens=3 needs eager decoding"):
                with add_steering(model, LAYER, vectors(), steer_tokens=3):
                    generate(model, cache_implementation="static", compile_config=config)
    finally:
        torch._dynamo.reset()
