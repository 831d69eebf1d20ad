"""`FeatureDataModule`, `L2SModule` and `l2s fit` on a synthetic features.h5 (seconds on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from l2s_lightning.features import write_features
from l2s_lightning.steerer import Steerer
from l2s_lightning.testing.synthetic import make_synthetic_features
from l2s_lightning.training.cli import fit_main
from l2s_lightning.training.data import FeatureDataModule, carve_validation
from l2s_lightning.training.module import L2SModule, plateau_multiplier

REPO = Path(__file__).resolve().parents[1]
QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.accelerator",
    "cpu",
]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_synthetic_features(tmp_path_factory.mktemp("features") / "features.h5", n=200, dim=16)


def test_fit_all_methods_l2s_beats_mean(features, tmp_path):
    out = tmp_path / "out"
    argv = [
        "--data.features",
        str(features),
        "--out_dir",
        str(out),
        "--method",
        "all",
        "--trainer.max_epochs",
        "25",
        "--model.lr",
        "1e-2",
        "--model.normalize_input",
        "true",
        "--default_alpha",
        "3",
        *QUIET,
    ]
    assert fit_main(argv) == 0
    report = json.loads((out / "fit_report.json").read_text())
    methods = report["methods"]
    assert set(methods) == {"l2s", "mean", "mean_ba", "random", "p2s_oracle"}
    assert methods["l2s"]["val"]["cos"] > methods["mean"]["val"]["cos"] + 0.1
    assert methods["l2s"]["val"]["mse"] < methods["mean"]["val"]["mse"]
    assert methods["l2s"]["test"]["cos"] > methods["mean"]["test"]["cos"]
    assert methods["p2s_oracle"]["val"] is None and methods["p2s_oracle"]["test"]["cos"] == pytest.approx(1.0)
    assert abs(methods["random"]["val"]["cos"]) < 0.5
    assert report["rows"]["train"] + report["rows"]["val"] + report["rows"]["test"] == 200
    for method in methods:
        steerer = Steerer.load(out / "steerers" / method)
        assert (
            steerer.method == method and steerer.default_alpha == 3.0 and steerer.fingerprint == report["fingerprint"]
        )
    l2s = Steerer.load(out / "steerers" / "l2s")
    assert l2s.input_norm and l2s.mlp == {"hidden": 100, "activation": "tanh", "bias_out": True}
    run = out / "runs" / "l2s"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "curves.png").stat().st_size > 1000
    assert list((run / "csv").rglob("metrics.csv")) and list((run / "tb").rglob("events.out.tfevents*"))
    assert (out / "fit_config.yaml").is_file()
    # the steerer's g equals the checkpoint's module
    module = L2SModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    h = torch.randn(5, 16)
    assert torch.allclose(module(h), l2s.vectors(h), atol=1e-6)


def test_fit_baseline_only_has_no_training_loop(features, tmp_path):
    out = tmp_path / "out"
    assert fit_main(["--data.features", str(features), "--out_dir", str(out), "--method", "mean_ba", *QUIET]) == 0
    assert not (out / "runs").exists()
    assert sorted(p.name for p in (out / "steerers").iterdir()) == ["mean_ba"]
    report = json.loads((out / "fit_report.json").read_text())["methods"]
    assert report["mean_ba"]["saved"] and not report["mean"]["saved"]  # baselines compared, not saved


def test_datamodule_split_and_streaming(features):
    memory = FeatureDataModule(str(features), batch_size=16, val_fraction=0.2, seed=1)
    stream = FeatureDataModule(str(features), batch_size=16, val_fraction=0.2, seed=1, in_memory_max_bytes=0)
    memory.setup("fit"), stream.setup("fit")
    assert memory.in_memory and not stream.in_memory
    file = memory.file
    assert set(memory.train_indices).isdisjoint(memory.val_indices)
    assert set(memory.train_indices) | set(memory.val_indices) == set(file.rows("train"))
    assert set(file.behaviour[memory.val_indices]) == {"refuse", "defer"}
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        for a, b in zip(getattr(memory, name)(), getattr(stream, name)(), strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    loader = memory.train_dataloader()
    first = [x for x, _ in loader]
    loader.sampler.set_epoch(1)
    assert not torch.equal(torch.cat(first), torch.cat([x for x, _ in loader]))
    loader.sampler.set_epoch(0)
    assert torch.equal(torch.cat(first), torch.cat([x for x, _ in loader]))  # a function of (seed, epoch)
    mean, std = memory.input_stats()
    train = torch.from_numpy(file.read(memory.train_indices)["context"])
    assert torch.allclose(mean, train.mean(0), atol=1e-5) and torch.allclose(std, train.std(0), atol=1e-5)


def test_streaming_with_a_worker(features):
    data = FeatureDataModule(str(features), batch_size=32, in_memory_max_bytes=0, num_workers=1)
    data.setup()
    expected = torch.from_numpy(data.file.read(data.val_indices)["steer"])
    assert torch.equal(torch.cat([z for _, z in data.val_dataloader()]), expected)


def test_carve_validation_keeps_each_behaviour_in_train():
    train, val = carve_validation(["a"] * 10 + ["b"], 0.5, seed=0)
    assert len(val) == 5 and 10 in train and sorted([*train, *val]) == list(range(11))


def _nan_file(tmp_path, which: str) -> Path:
    path = make_synthetic_features(tmp_path / "f.h5", n=40, dim=4)
    with h5py.File(path, "a") as raw:
        raw[which][3, 0] = np.nan
    return path


def test_datamodule_errors(features, tmp_path):
    with pytest.raises(ValueError, match=r"hidden_size: the file has 16, the config asks for 32"):
        FeatureDataModule(str(features), hidden_size=32)
    with pytest.raises(ValueError, match=r"layer_steer: the file has 1, the config asks for 15"):
        FeatureDataModule(str(features), layer_steer=15, layer_context=1)
    with pytest.raises(ValueError, match=r"layer_context: the file has 1, the config asks for 30"):
        FeatureDataModule(str(features), layer_context=30)
    with pytest.raises(ValueError, match=r"model: the file has 'synthetic', the config asks for 'llava'"):
        FeatureDataModule(str(features), model_name="llava")
    with pytest.raises(ValueError, match=r"no rows in split 'training'"):
        FeatureDataModule(str(features), train_split="training").setup("fit")
    with pytest.raises(ValueError, match=r"NaN/Inf features: s0003"):
        FeatureDataModule(str(_nan_file(tmp_path, "steer"))).setup("fit")
    with pytest.raises(FileNotFoundError, match="l2s extract"):
        FeatureDataModule(str(tmp_path / "none.h5"))
    # through the CLI: the same checks stop `l2s fit` before any training
    with pytest.raises(ValueError, match="hidden_size"):
        fit_main(
            ["--data.features", str(features), "--data.hidden_size", "8", "--out_dir", str(tmp_path / "o"), *QUIET]
        )


def test_fit_mean_ba_missing_behaviour(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    behaviours = ["refuse"] * 10 + ["defer"] * 2
    path = write_features(
        tmp_path / "f.h5",
        rng.normal(size=(n, 4)),
        rng.normal(size=(n, 4)),
        [f"i{k}" for k in range(n)],
        ["c"] * n,
        behaviours,
        ["train"] * 10 + ["test"] * 2,
        model="m",
        layer_steer=0,
        layer_context=0,
    )
    with pytest.raises(ValueError, match=r"\['defer'\] of split 'test' have no training rows"):
        fit_main(["--data.features", str(path), "--out_dir", str(tmp_path / "o"), "--method", "mean_ba", *QUIET])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "fit").glob("*.yaml")))
def test_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        fit_main(["--config", str(REPO / "configs" / "fit" / name), "--model.lr", "3e-4", "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "lr: 0.0003" in printed and "method: all" in printed


@pytest.mark.parametrize("seed", range(5))
def test_plateau_multiplier_matches_torch(seed):
    history = (torch.rand(30, generator=torch.Generator().manual_seed(seed)) + torch.linspace(1, 0, 30)).tolist()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    for epoch, value in enumerate(history):
        assert plateau_multiplier(history[:epoch], 0.5, 2) == pytest.approx(optimizer.param_groups[0]["lr"])
        plateau.step(value)


def test_lr_schedule_is_cosine_times_plateau():
    module = L2SModule(4, lr=1.0, cosine_epochs=4, plateau_factor=0.5, plateau_patience=0)
    module.val_history = [3.0, 2.0, 2.5, 1.0]
    assert [round(module.lr_at(e), 6) for e in range(5)] == [1.0, 0.853553, 0.5, 0.073223, 0.0]


def test_keep_best_uses_the_best_checkpoint(features, tmp_path):
    out = tmp_path / "out"
    argv = [
        "--data.features",
        str(features),
        "--out_dir",
        str(out),
        "--trainer.max_epochs",
        "4",
        "--keep",
        "best",
        "--model.lr",
        "0.5",
        "--model.plateau_factor",
        "1",
        *QUIET,
    ]
    assert fit_main(argv) == 0
    (best,) = (out / "runs" / "l2s" / "checkpoints").glob("best-epoch*.ckpt")
    state = torch.load(best, weights_only=False)["state_dict"]
    steerer = Steerer.load(out / "steerers" / "l2s")
    assert steerer.info["keep"] == "best"
    assert torch.equal(steerer.tensors["mlp.0.weight"], state["mlp.net.0.weight"])


def test_output_initialisation_from_targets(features):
    data = FeatureDataModule(str(features))
    mean, cov = data.target_moments(covariance=True)
    z = torch.from_numpy(data.file.read(data.train_indices)["steer"]).double()
    assert torch.allclose(mean, z.mean(0)) and torch.allclose(cov, torch.cov(z.T, correction=0), atol=1e-8)
    module = L2SModule(16, hidden=4, init_output="svd")
    module.init_output(mean, cov)
    weight = module.mlp.net[-1].weight.double()
    assert torch.allclose(module.mlp.net[-1].bias.double(), mean, atol=1e-6)
    gram = weight.T @ weight  # orthogonal columns, squared norms = leading eigenvalues
    assert torch.allclose(gram, torch.diag(torch.linalg.eigvalsh(cov).flip(0)[:4]), atol=1e-4)
    with pytest.raises(ValueError, match="needs bias_out=true"):
        L2SModule(16, bias_out=False)
    L2SModule(16, bias_out=False, init_output="none")


def test_fit_p2s_oracle_without_test_rows(tmp_path):
    path = make_synthetic_features(tmp_path / "train_only.h5", n=40, dim=8, test_fraction=0.0)
    out = tmp_path / "out"
    with pytest.raises(
        ValueError,
        match=r"--method p2s_oracle: .*train_only\.h5 has no rows in split 'test'.*data\.splits=\[train, test\]",
    ):
        fit_main(["--data.features", str(path), "--out_dir", str(out), "--method", "p2s_oracle", *QUIET])
    assert not out.exists()  # refused before anything was written
    # with --method all the oracle is only left out
    assert (
        fit_main(
            [
                "--data.features",
                str(path),
                "--out_dir",
                str(out),
                "--method",
                "all",
                "--trainer.max_epochs",
                "1",
                *QUIET,
            ]
        )
        == 0
    )
    report = json.loads((out / "fit_report.json").read_text())
    assert "p2s_oracle" not in report["methods"] and report["methods"]["mean"]["saved"]


def test_evaluation_per_behaviour_reads_a_zero_target_by_its_norm(tmp_path):
    """Rows of a zero-target behaviour (z = 0) have no cosine; their mean vector norm shows whether a steerer
    leaves them alone (Mean-S(BA) exactly, the single mean not)."""
    import numpy as np

    from l2s_lightning.features import FeatureFile, write_features
    from l2s_lightning.training.baselines import build_baseline, evaluate_steerer

    rng = np.random.default_rng(0)
    n, dim = 40, 8
    behaviours = ["refuse", "answer"] * (n // 2)
    steer = rng.normal(size=(n, dim)) + 3.0
    steer[1::2] = 0.0  # the answer rows: z = 0
    attrs = {"model": "m", "layer_steer": 1, "layer_context": 1, "hidden_size": dim, "num_layers": 2}
    path = write_features(
        tmp_path / "f.h5",
        rng.normal(size=(n, dim)),
        steer,
        [f"id{i:02d}" for i in range(n)],
        ["c"] * n,
        behaviours,
        ["train"] * n,
        **attrs,
    )
    file = FeatureFile(path)
    rows = np.arange(n)
    by_mean_ba = evaluate_steerer(build_baseline("mean_ba", file, rows=rows), file, rows)["by_behaviour"]
    by_mean = evaluate_steerer(build_baseline("mean", file, rows=rows), file, rows)["by_behaviour"]
    assert by_mean_ba["answer"]["cos"] is None and by_mean_ba["answer"]["norm"] == pytest.approx(0.0, abs=1e-6)
    assert by_mean_ba["refuse"]["cos"] > 0.5 and by_mean_ba["refuse"]["n"] == n // 2
    assert by_mean["answer"]["norm"] > 1.0  # one vector for every input cannot leave the answer rows alone
