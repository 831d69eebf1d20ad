"""The method registry: every method's flags, the Literal choices of the CLIs, and a Steerer of each method."""

from __future__ import annotations

import json
from typing import get_args

import pytest
import torch

from l2s_lightning.methods import (
    ALL_METHODS,
    BASELINES,
    METHOD_REGISTRY,
    STEERER_METHODS,
    BaselineName,
    MethodName,
    SteererMethodName,
)
from l2s_lightning.mlp import SteeringMLP
from l2s_lightning.steerer import Steerer

DIM = 6
KEYS = {"behaviours": ["refuse", "defer", "refuse"], "sample_ids": ["s2", "s0", "s1"]}

# name: (making, vector tensor, required tensors, needs context, needs behaviours, needs sample ids)
EXPECTED = {
    "none": ("unfitted", None, (), False, False, False),
    "prompt": ("unfitted", None, (), False, False, False),
    "mean": ("features", "mean", ("mean",), False, False, False),
    "mean_ba": ("features", "behaviour_means", ("behaviour_means",), False, True, False),
    "random": ("features", "random", ("random",), False, False, False),
    "p2s_oracle": ("features", "oracle_steer", ("oracle_steer",), False, False, True),
    "l2s": ("trained", None, ("mlp.0.weight",), True, False, False),
}


def test_every_methods_flags():
    assert list(METHOD_REGISTRY) == list(EXPECTED)
    for name, spec in METHOD_REGISTRY.items():
        flags = (
            spec.making,
            spec.vector_tensor,
            spec.required,
            spec.needs_context,
            spec.needs_behaviours,
            spec.needs_sample_ids,
        )
        assert spec.name == name and flags == EXPECTED[name], name
        assert spec.has_steerer == (spec.making != "unfitted") and spec.is_baseline == (spec.making == "features")
    assert ALL_METHODS == ("none", "prompt", "mean", "mean_ba", "random", "p2s_oracle", "l2s")
    assert STEERER_METHODS == ("mean", "mean_ba", "random", "p2s_oracle", "l2s")
    assert BASELINES == ("mean", "mean_ba", "random", "p2s_oracle")


def test_literal_types_are_the_registry():
    assert get_args(MethodName) == ALL_METHODS
    assert set(get_args(SteererMethodName)) == set(STEERER_METHODS)
    assert get_args(BaselineName) == BASELINES


def test_every_place_uses_the_registry():
    from l2s_lightning.generation import module as generation
    from l2s_lightning.pipeline import ALL_METHODS as PIPELINE_METHODS
    from l2s_lightning.training import cli as fit_cli
    from l2s_lightning.training.baselines import BASELINES as BUILT
    from l2s_lightning.training.baselines import BUILDERS

    assert get_args(generation.Method) == ALL_METHODS and set(generation.STEERER_METHODS) == set(STEERER_METHODS)
    assert get_args(fit_cli.Method) == ("l2s", *BASELINES, "all")  # the order `l2s fit --help` lists
    assert PIPELINE_METHODS is ALL_METHODS
    assert tuple(BUILDERS) == BASELINES == BUILT


def small_steerer(method: str) -> Steerer:
    """A Steerer of ``method`` from small random tensors (D = 6)."""
    spec = METHOD_REGISTRY[method]
    generator = torch.Generator().manual_seed(0)
    kw: dict = {}
    tensors: dict[str, torch.Tensor]
    if spec.needs_context:
        mlp = SteeringMLP(DIM, hidden=4)
        tensors = {f"mlp.{name}": t for name, t in mlp.net.state_dict().items()}
        kw["mlp"] = {"hidden": 4, "activation": "tanh", "bias_out": True}
    elif spec.lookup is not None and spec.vector_tensor is not None:
        labels = {"behaviours": ["defer", "refuse"], "oracle_ids": ["s0", "s1", "s2"]}[spec.lookup.labels]
        tensors = {spec.vector_tensor: torch.randn(len(labels), DIM, generator=generator)}
        kw[spec.lookup.labels] = labels
    else:
        assert spec.vector_tensor is not None
        tensors = {spec.vector_tensor: torch.randn(DIM, generator=generator)}
    return Steerer(method, model="m", layer_steer=1, layer_context=1, hidden_size=DIM, tensors=tensors, **kw)


@pytest.mark.parametrize("method", STEERER_METHODS)
def test_a_steerer_of_each_method(tmp_path, method):
    spec = METHOD_REGISTRY[method]
    steerer = small_steerer(method)
    assert steerer.spec is spec
    assert (steerer.needs_context, steerer.needs_behaviours, steerer.needs_sample_ids) == EXPECTED[method][3:]
    context = torch.randn(3, DIM, generator=torch.Generator().manual_seed(1))
    vectors = steerer.vectors(context, **KEYS)
    assert vectors.shape == (3, DIM) and vectors.dtype == torch.float32
    if spec.needs_context:
        assert not torch.equal(vectors[0], vectors[1])  # one vector per input, from its h
    elif spec.lookup is None:
        assert torch.equal(vectors, steerer.tensors[method].expand(3, -1))
    else:
        keys = KEYS[spec.lookup.key]
        rows = [getattr(steerer, spec.lookup.labels).index(key) for key in keys]
        assert torch.equal(vectors, steerer.tensors[spec.vector_tensor][rows])
        with pytest.raises(ValueError, match=f"needs each input's {spec.lookup.noun}"):
            steerer.vectors(context)
        with pytest.raises(ValueError, match="no (vector|target z) for"):
            steerer.check_inputs(**{spec.lookup.key: ["nope"]})
    steerer.check_inputs(**{key: ["nope"] for key in KEYS if not (spec.lookup and spec.lookup.key == key)})
    loaded = Steerer.load(steerer.save(tmp_path))
    assert torch.equal(loaded.vectors(context, **KEYS), vectors)
    assert (tmp_path / "oracle_ids.json").exists() == spec.needs_sample_ids
    assert (json.loads((tmp_path / "steerer.json").read_text())["oracle_ids"] is not None) == spec.needs_sample_ids
    if spec.vector_tensor is not None:
        assert steerer.norm_stats()["vector_norm_mean"] > 0
    else:
        assert "vector_norm_mean" not in steerer.norm_stats()


def test_bad_steerers():
    common = {"model": "m", "layer_steer": 0, "layer_context": 0, "hidden_size": DIM}
    for method in ("none", "prompt", "nope"):
        with pytest.raises(ValueError, match=f"unknown steering method '{method}'"):
            Steerer(method, tensors={}, **common)
    with pytest.raises(ValueError, match=r"mean steerer needs tensor\(s\) \['mean'\]"):
        Steerer("mean", tensors={"random": torch.zeros(DIM)}, **common)
    with pytest.raises(ValueError, match="1 behaviours but behaviour_means has 2 rows"):
        Steerer("mean_ba", tensors={"behaviour_means": torch.zeros(2, DIM)}, behaviours=["a"], **common)
    with pytest.raises(ValueError, match="2 oracle ids but oracle_steer has 1 rows"):
        Steerer("p2s_oracle", tensors={"oracle_steer": torch.zeros(1, DIM)}, oracle_ids=["a", "b"], **common)
    with pytest.raises(ValueError, match="oracle_ids has repeated sample ids"):
        Steerer("p2s_oracle", tensors={"oracle_steer": torch.zeros(2, DIM)}, oracle_ids=["a", "a"], **common)
    with pytest.raises(ValueError, match="l2s steerer needs the `mlp` config"):
        Steerer("l2s", tensors={"mlp.0.weight": torch.zeros(4, DIM)}, **common)
