"""Steerer folders: every method saves, loads back and gives identical vectors; clear errors."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from l2s_lightning.features import FeatureFile
from l2s_lightning.methods import METHOD_REGISTRY, STEERER_METHODS
from l2s_lightning.mlp import SteeringMLP
from l2s_lightning.steerer import Steerer
from l2s_lightning.testing.synthetic import make_synthetic_features
from l2s_lightning.training.baselines import build_baseline, l2s_steerer


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> FeatureFile:
    return FeatureFile(make_synthetic_features(tmp_path_factory.mktemp("f") / "features.h5", n=80, dim=8))


def _steerer(method: str, file: FeatureFile) -> Steerer:
    if method == "l2s":
        torch.manual_seed(0)
        mlp = SteeringMLP(file.dim, hidden=5, activation="gelu", bias_out=False, normalize_input=True)
        mlp.set_input_stats(torch.arange(file.dim).float(), torch.linspace(0.5, 2.0, file.dim))
        return l2s_steerer(mlp, file, file.rows("train"), default_alpha=2.5, seed=0)
    return build_baseline(method, file, seed=3, default_alpha=2.5)


@pytest.mark.parametrize("method", STEERER_METHODS)
def test_save_load_identical_vectors(tmp_path, features, method):
    steerer = _steerer(method, features)
    test = features.load("test")
    args = (torch.from_numpy(test.context), test.behaviour, test.sample_id)
    before = steerer.vectors(*args)
    assert before.shape == (len(test), features.dim) and before.dtype == torch.float32
    loaded = Steerer.load(steerer.save(tmp_path / method))
    assert torch.equal(loaded.vectors(*args), before)
    assert loaded.to_json() == steerer.to_json()
    config = json.loads((tmp_path / method / "steerer.json").read_text())
    assert config["method"] == method and config["layer_steer"] == 1 and config["hidden_size"] == 8
    assert config["default_alpha"] == 2.5 and len(config["fingerprint"]) == 64
    assert loaded.norm_stats()["z_norm_mean"] > 0
    # dtype and device follow the context
    assert steerer.vectors(args[0].double(), *args[1:]).dtype == torch.float64


def test_method_specific_values(features):
    train = features.load("train")
    z = torch.from_numpy(train.steer)
    mean = build_baseline("mean", features)
    assert torch.allclose(mean.vectors(behaviours=["x"])[0], z.mean(0), atol=1e-6)
    ba = build_baseline("mean_ba", features)
    assert ba.behaviours == ["defer", "refuse"]
    refuse = torch.tensor([b == "refuse" for b in train.behaviour])
    assert torch.allclose(ba.vectors(behaviours=["refuse"])[0], z[refuse].mean(0), atol=1e-6)
    rand = build_baseline("random", features, seed=1)
    assert torch.isclose(rand.tensors["random"].norm(), z.norm(dim=-1).mean(), rtol=1e-5)
    assert torch.equal(rand.tensors["random"], build_baseline("random", features, seed=1).tensors["random"])
    assert not torch.equal(rand.tensors["random"], build_baseline("random", features, seed=2).tensors["random"])
    oracle = build_baseline("p2s_oracle", features)
    test = features.load("test")
    assert torch.equal(oracle.vectors(sample_ids=test.sample_id[::-1]), torch.from_numpy(test.steer[::-1].copy()))


def test_errors(features):
    with pytest.raises(ValueError, match=r"no vector for behaviour\(s\) \['comply'\]"):
        build_baseline("mean_ba", features).vectors(behaviours=["refuse", "comply"])
    with pytest.raises(ValueError, match=r"no target z for sample id\(s\) \['nope'\]"):
        build_baseline("p2s_oracle", features).vectors(sample_ids=["nope"])
    with pytest.raises(ValueError, match="needs each input's behaviour"):
        build_baseline("mean_ba", features).vectors(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="needs the context"):
        _steerer("l2s", features).vectors(behaviours=["refuse"])
    with pytest.raises(ValueError, match="different batch sizes"):
        build_baseline("mean", features).vectors(torch.zeros(2, 8), behaviours=["refuse"])
    with pytest.raises(ValueError, match=r"context must be \(B, 8\)"):
        build_baseline("mean", features).vectors(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baseline("l2s", features)
    with pytest.raises(FileNotFoundError, match="not a steerer folder"):
        Steerer.load(features.path.parent / "nothing")
    broken = features.path.parent / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "steerer.json").write_text('{"method": "mean",')
    with pytest.raises(ValueError, match=r"broken/steerer\.json: not valid JSON"):
        Steerer.load(broken)
    (broken / "steerer.json").write_text('{"method": "mean"}')
    with pytest.raises(ValueError, match=r"broken/steerer\.json: not a steerer description \(missing \['model'"):
        Steerer.load(broken)


def test_mean_ba_missing_training_behaviour(tmp_path):
    from l2s_lightning.features import write_features

    rng = np.random.default_rng(0)
    path = write_features(
        tmp_path / "f.h5",
        rng.normal(size=(4, 3)),
        rng.normal(size=(4, 3)),
        ["a", "b", "c", "d"],
        ["x"] * 4,
        ["refuse", "refuse", "refuse", "defer"],
        ["train", "train", "test", "test"],
        model="m",
        layer_steer=0,
        layer_context=0,
    )
    with pytest.raises(ValueError, match=r"behaviour\(s\) \['defer'\] of split 'test' have no training rows"):
        build_baseline("mean_ba", path)


def test_attach_delegates(monkeypatch, features):
    calls = {}
    fake = types.ModuleType("l2s_lightning.steering.attach")
    fake.attach_steerer = lambda steerer, model, alpha, **kw: (
        calls.update(steerer=steerer, model=model, alpha=alpha, kw=kw) or "handle"
    )
    monkeypatch.setitem(sys.modules, "l2s_lightning.steering.attach", fake)
    steerer = build_baseline("mean", features, default_alpha=1.5)
    assert steerer.attach("model", 3.0, mode="all") == "handle"
    assert calls == {"steerer": steerer, "model": "model", "alpha": 3.0, "kw": {"mode": "all"}}
    steerer.attach("model")
    assert calls["alpha"] == 1.5


def test_attach_takes_the_real_api_arguments():
    """``Steerer.attach`` forwards to ``attach_steerer``, whose keyword arguments are these."""
    import inspect

    from l2s_lightning.steering.attach import attach_steerer

    assert list(inspect.signature(attach_steerer).parameters) == [
        "steerer",
        "model",
        "alpha",
        "mode",
        "behaviours",
        "sample_ids",
        "hook",
        "steer_tokens",
    ]


class DeviceMoves(TorchDispatchMode):
    """Records every floating-point tensor copied from one device to another while active."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if source.is_floating_point() and source.device != out.device:
                self.moves.append((str(source.device), str(out.device)))
        return out


@pytest.mark.parametrize("method", STEERER_METHODS)
def test_vectors_on_the_context_device_and_dtype_placed_once(features, method):
    """A context on another device (``meta`` stands in for a GPU) gets vectors there: the steerer is moved
    once (by ``to`` or by the first call), then no h or vector crosses devices."""
    test = features.load("test")
    args = {"behaviours": test.behaviour[:3], "sample_ids": test.sample_id[:3]}
    context = torch.from_numpy(test.context[:3]).to("meta", torch.bfloat16)
    placed = _steerer(method, features).to("meta", torch.bfloat16)
    with DeviceMoves() as moves:
        for _ in range(2):
            vectors = placed.vectors(context, **args)
    assert moves.moves == [] and vectors.device.type == "meta" and vectors.dtype == torch.bfloat16
    assert vectors.shape == (3, features.dim)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in placed.tensors.values())  # what is saved
    lazy = _steerer(method, features)
    with DeviceMoves() as first:
        lazy.vectors(context, **args)
    with DeviceMoves() as second:
        lazy.vectors(context, **args)
    assert first.moves and second.moves == []
    assert {source for source, _ in first.moves} == {"cpu"}  # the steerer moved, never h
    # and back on the CPU, in float64, the values are those of the float32 computation
    cpu = torch.from_numpy(test.context[:3])
    steerer = _steerer(method, features)
    torch.testing.assert_close(
        steerer.to("cpu", torch.float64).vectors(cpu.double(), **args), steerer.vectors(cpu, **args).double()
    )


def test_check_inputs(features):
    build_baseline("mean_ba", features).check_inputs(behaviours=["refuse", "defer"], sample_ids=["anything"])
    with pytest.raises(ValueError, match=r"no vector for behaviour\(s\) \['x'\]; it knows \['defer', 'refuse'\]"):
        build_baseline("mean_ba", features).check_inputs(behaviours=["refuse", "x"])
    oracle = build_baseline("p2s_oracle", features)
    oracle.check_inputs(sample_ids=oracle.oracle_ids[:2], behaviours=["x", "y"])
    with pytest.raises(ValueError, match=r"no target z for sample id\(s\) \['nope'\]"):
        oracle.check_inputs(sample_ids=[oracle.oracle_ids[0], "nope"])
    for method in (m for m in STEERER_METHODS if METHOD_REGISTRY[m].lookup is None):  # l2s, mean, random
        _steerer(method, features).check_inputs(behaviours=["x"], sample_ids=["y"])


def _saved_mean(tmp_path, features) -> tuple:
    folder = _steerer("mean", features).save(tmp_path / "mean")
    return folder, json.loads((folder / "steerer.json").read_text())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_size", "16", r"steerer\.json: hidden_size must be a whole number, got '16'"),
        ("layer_steer", 1.5, r"steerer\.json: layer_steer must be a whole number, got 1\.5"),
        ("default_alpha", float("nan"), r"steerer\.json: default_alpha must be a finite number, got nan"),
        ("default_alpha", "2", r"steerer\.json: default_alpha must be a finite number, got '2'"),
    ],
)
def test_load_refuses_a_misshapen_description(tmp_path, features, key, value, message):
    from l2s_lightning.errors import L2SInputError

    folder, config = _saved_mean(tmp_path, features)
    (folder / "steerer.json").write_text(json.dumps(config | {key: value}))
    with pytest.raises(L2SInputError, match=message):
        Steerer.load(folder)


def test_load_refuses_unreadable_or_non_finite_weights(tmp_path, features):
    from safetensors.torch import save_file

    from l2s_lightning.errors import L2SInputError

    folder, _ = _saved_mean(tmp_path, features)
    weights = folder / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(L2SInputError, match=r"weights\.safetensors: not a readable safetensors file"):
        Steerer.load(folder)
    weights.write_bytes(b"\x00" * 64)  # overwritten
    with pytest.raises(L2SInputError, match="not a readable safetensors file"):
        Steerer.load(folder)
    vector = torch.ones(features.dim)
    vector[3] = float("nan")
    save_file({"mean": vector}, str(weights))  # valid safetensors, NaN inside
    with pytest.raises(L2SInputError, match=r"tensor 'mean' holds NaN or infinite values"):
        Steerer.load(folder)
    save_file({"mean": torch.ones(features.dim + 1)}, str(weights))  # readable, wrong shape: the folder is named
    with pytest.raises(L2SInputError, match=rf"{folder}: tensor 'mean' has shape"):
        Steerer.load(folder)
