"""Resuming from last.ckpt ends at the same weights (and learning-rate history) as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from l2s_lightning.steerer import Steerer
from l2s_lightning.testing.synthetic import make_synthetic_features
from l2s_lightning.training.cli import checkpoint_callbacks, fit_main
from l2s_lightning.training.curves import read_epoch_metrics
from l2s_lightning.training.data import FeatureDataModule
from l2s_lightning.training.module import L2SModule, plateau_multiplier

QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.accelerator",
    "cpu",
]
EPOCHS, STOP, LR = 6, 2, 0.2  # with these the plateau fires at the end of epoch STOP - 1: the hard case


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_synthetic_features(tmp_path_factory.mktemp("features") / "features.h5", n=160, dim=16)


def _argv(features: Path, out: Path, epochs: int) -> list[str]:
    # a large lr and patience 0 make ReduceLROnPlateau fire, so both schedulers are exercised
    return [
        "--data.features",
        str(features),
        "--data.batch_size",
        "16",
        "--out_dir",
        str(out),
        "--method",
        "l2s",
        "--model.lr",
        str(LR),
        "--model.plateau_patience",
        "0",
        "--model.plateau_factor",
        "0.3",
        "--model.cosine_epochs",
        str(EPOCHS),
        "--model.normalize_input",
        "true",
        "--trainer.max_epochs",
        str(epochs),
        *QUIET,
    ]


@pytest.fixture(scope="module")
def uninterrupted(features, tmp_path_factory) -> Path:
    """The out_dir of an uninterrupted run of EPOCHS epochs."""
    out = tmp_path_factory.mktemp("full")
    assert fit_main(_argv(features, out, EPOCHS)) == 0
    return out


def _assert_same_steerer(reference: Path, resumed: Path) -> None:
    full, part = (Steerer.load(out / "steerers" / "l2s") for out in (reference, resumed))
    assert sorted(full.tensors) == sorted(part.tensors)
    for name, tensor in full.tensors.items():
        assert torch.equal(tensor, part.tensors[name]), name


def test_cli_stop_and_resume_equals_uninterrupted(features, uninterrupted, tmp_path):
    assert fit_main(_argv(features, tmp_path / "part", STOP)) == 0
    assert fit_main([*_argv(features, tmp_path / "part", EPOCHS), "--ckpt_path", "last"]) == 0
    _assert_same_steerer(uninterrupted, tmp_path / "part")
    lr_full, lr_part = (
        read_epoch_metrics(path / "runs" / "l2s" / "csv")["lr"] for path in (uninterrupted, tmp_path / "part")
    )
    assert lr_full == lr_part and sorted(lr_full) == list(range(EPOCHS))
    cosine_only = [LR * (1 + torch.cos(torch.tensor(torch.pi * e / EPOCHS))) / 2 for e in range(EPOCHS)]
    assert any(abs(lr_full[e] - float(c)) > 1e-6 for e, c in enumerate(cosine_only)), "plateau never fired"
    # the curves cover the whole history across the two CSV versions
    assert (tmp_path / "part" / "runs" / "l2s" / "curves.png").is_file()
    assert len(list((tmp_path / "part" / "runs" / "l2s" / "csv").glob("version_*"))) == 2


class CrashAfter(L.Callback):
    """A crash after ``batches`` optimizer steps of epoch ``epoch`` (given to `l2s fit` via --trainer.callbacks)."""

    def __init__(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches = epoch, batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx + 1 == self.batches:
            raise RuntimeError(
                f"simulated crash after {self.batches} of {trainer.num_training_batches} batches of epoch {self.epoch}"
            )


def test_cli_crash_mid_epoch_then_resume_equals_uninterrupted(features, uninterrupted, tmp_path):
    """`l2s fit` dies in the middle of epoch STOP; `--ckpt_path last` redoes that epoch from its start
    (last.ckpt of epoch STOP - 1) and ends at exactly the weights of the uninterrupted run."""
    out = tmp_path / "crashed"
    crash = json.dumps([{"class_path": f"{__name__}.CrashAfter", "init_args": {"epoch": STOP, "batches": 3}}])
    with pytest.raises(RuntimeError, match=rf"simulated crash after 3 of 8 batches of epoch {STOP}"):
        fit_main([*_argv(features, out, EPOCHS), "--trainer.callbacks", crash])
    checkpoint = torch.load(out / "runs" / "l2s" / "checkpoints" / "last.ckpt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (STOP - 1, 8 * STOP)
    assert not (out / "steerers" / "l2s").exists()
    assert fit_main([*_argv(features, out, EPOCHS), "--ckpt_path", "last"]) == 0
    resumed_epochs = read_epoch_metrics(out / "runs" / "l2s" / "csv" / "version_1")["lr"]
    assert sorted(resumed_epochs) == list(
        range(STOP, EPOCHS)
    )  # it resumed: a fresh run would also end at the same weights
    _assert_same_steerer(uninterrupted, out)
    lr_full, lr_resumed = (read_epoch_metrics(path / "runs" / "l2s" / "csv")["lr"] for path in (uninterrupted, out))
    assert lr_full == lr_resumed


def test_crash_in_an_epoch_without_validation_resumes_from_the_epoch_before(features, tmp_path):
    """With validation every 2nd epoch, last.ckpt is still written at every epoch's end: a crash in epoch 3
    loses epoch 3 only, and the resumed run ends at the uninterrupted run's weights."""
    every_2 = ["--trainer.check_val_every_n_epoch", "2"]
    full = tmp_path / "full"
    assert fit_main([*_argv(features, full, EPOCHS), *every_2]) == 0
    out = tmp_path / "crashed"
    crash = json.dumps([{"class_path": f"{__name__}.CrashAfter", "init_args": {"epoch": 3, "batches": 3}}])
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_main([*_argv(features, out, EPOCHS), *every_2, "--trainer.callbacks", crash])
    checkpoint = torch.load(out / "runs" / "l2s" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 2  # an epoch that did not validate
    assert fit_main([*_argv(features, out, EPOCHS), *every_2, "--ckpt_path", "last"]) == 0
    _assert_same_steerer(full, out)


class KillAt(L.Callback):
    """Simulates a kill in the middle of an epoch."""

    def __init__(self, epoch: int, batch: int = 2) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise KeyboardInterrupt("simulated kill")


def _train(features: Path, root: Path, ckpt_path: str | None = None, kill_at: int | None = None) -> L2SModule:
    L.seed_everything(0)
    data = FeatureDataModule(str(features), batch_size=16, seed=0)
    model = L2SModule(
        data.dim, lr=LR, plateau_patience=0, plateau_factor=0.3, cosine_epochs=EPOCHS, normalize_input=True
    )
    callbacks = checkpoint_callbacks(root / "checkpoints") + ([KillAt(kill_at)] if kill_at is not None else [])
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        deterministic=True,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=root,
    )
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except (KeyboardInterrupt, SystemExit):
        pass
    return model


def test_kill_mid_epoch_and_resume(features, tmp_path):
    reference = _train(features, tmp_path / "ref")
    killed = _train(features, tmp_path / "run", kill_at=STOP)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == STOP - 1
    assert not torch.equal(killed.mlp.net[0].weight, reference.mlp.net[0].weight)
    resumed = _train(features, tmp_path / "run", ckpt_path="last")
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    assert torch.equal(reference.mlp.net[2].weight, resumed.mlp.net[2].weight)
    assert resumed.val_history == reference.val_history
    # the plateau fired in the epoch the checkpoint was written in: the hard case for resuming
    history = reference.val_history
    assert plateau_multiplier(history[: STOP - 1], 0.3, 0) == 1.0 > plateau_multiplier(history[:STOP], 0.3, 0)


class _Marker:
    """Unpickling this writes a file: a stand-in for code a checkpoint must never run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


def test_unreadable_last_checkpoint_is_named(features, tmp_path):
    from l2s_lightning.errors import L2SInputError

    out = tmp_path / "torn"
    assert fit_main(_argv(features, out, STOP)) == 0
    last = out / "runs" / "l2s" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(L2SInputError, match=rf"--ckpt_path last: {last} is not a readable checkpoint .*start over"):
        fit_main([*_argv(features, out, EPOCHS), "--ckpt_path", "last"])


def test_keep_best_loads_weights_only_from_the_run_folder(features, tmp_path):
    """A last.ckpt whose checkpoint state names a best file elsewhere, or a best file holding pickled code, is
    refused; the code never runs."""
    from l2s_lightning.errors import L2SInputError

    out = tmp_path / "run"
    assert fit_main(_argv(features, out, STOP)) == 0
    folder = out / "runs" / "l2s" / "checkpoints"
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Marker(str(marker))}, evil)

    def point_best_at(path: Path) -> None:
        checkpoint = torch.load(folder / "last.ckpt", weights_only=False)
        for state in checkpoint["callbacks"].values():
            if state.get("monitor") == "val/mse":
                state["best_model_path"] = str(path)
        torch.save(checkpoint, folder / "last.ckpt")

    point_best_at(evil)
    args = [*_argv(features, out, STOP), "--ckpt_path", "last", "--keep", "best"]  # nothing left to train
    with pytest.raises(L2SInputError, match=rf"--keep best: the best checkpoint {evil} is not in this run's"):
        fit_main(args)
    inside = folder / "best-epoch099.ckpt"
    inside.write_bytes(evil.read_bytes())
    point_best_at(inside)
    with pytest.raises(L2SInputError, match=rf"--keep best: {inside} is not a readable checkpoint"):
        fit_main(args)
    assert not marker.exists()


def test_a_diverging_fit_stops_naming_the_learning_rate(features, tmp_path):
    from l2s_lightning.errors import L2SInputError

    args = [*_argv(features, tmp_path / "out", EPOCHS), "--model.lr", "1e12"]
    with pytest.raises(
        L2SInputError, match=r"training diverged at epoch 0, step \d+: loss .*lower model\.lr \(now 1e\+12\)"
    ):
        fit_main(args)
    assert not (tmp_path / "out" / "steerers").exists()


def test_resume_only_from_the_runs_own_checkpoint_folder(features, tmp_path):
    from l2s_lightning.errors import L2SInputError

    out = tmp_path / "run"
    assert fit_main(_argv(features, out, STOP)) == 0
    elsewhere = tmp_path / "elsewhere.ckpt"
    elsewhere.write_bytes((out / "runs" / "l2s" / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(L2SInputError, match=r"--ckpt_path .*elsewhere\.ckpt: only a checkpoint of this run's folder"):
        fit_main([*_argv(features, out, EPOCHS), "--ckpt_path", str(elsewhere)])
