"""The fit stage: train the L2S network on features.h5 and/or build the baseline steerers, then compare them.

Layout of ``out_dir``: ``steerers/<method>/`` (steerer folders), ``runs/l2s/`` (``checkpoints/last.ckpt``,
CSV and TensorBoard logs, ``curves.png``), ``fit_config.yaml`` and ``fit_report.json`` (validation and
test MSE / cosine of every method). ``ckpt_path="last"`` resumes a killed run from ``last.ckpt``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from rich.console import Console
from rich.table import Table

from l2s_lightning.config import config_record, fields_dict
from l2s_lightning.errors import L2SInputError
from l2s_lightning.methods import BASELINES, STEERER_METHODS, SteererMethodName
from l2s_lightning.stages.common import as_list, seed_run, sigterm_as_terminated
from l2s_lightning.steerer import Steerer
from l2s_lightning.training.baselines import build_baseline, evaluate_steerer, l2s_steerer
from l2s_lightning.training.curves import TrainingCurves
from l2s_lightning.training.data import FeatureDataModule
from l2s_lightning.training.module import L2SModule

FitMethod = Literal[SteererMethodName, "all"]
FIT_TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 100,
    "deterministic": True,
    "log_every_n_steps": 10,
    "enable_model_summary": False,  # the fit report says what was trained
}
"""Trainer settings of ``l2s fit`` that differ from Lightning's."""


@dataclass
class L2SSettings:
    """The arguments of :class:`~l2s_lightning.training.module.L2SModule` but ``dim``, which comes from the
    features file (kept equal by a test)."""

    hidden: int = 100
    activation: str = "tanh"
    bias_out: bool = True
    normalize_input: bool = False
    lr: float = 1e-4
    weight_decay: float = 0.0
    cosine: bool = True
    cosine_epochs: int | None = None
    eta_min: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    l1_weight: float = 0.0
    cosine_weight: float = 0.0
    init_output: str = "mean"


@dataclass
class FeatureDataSettings:
    """The arguments of :class:`~l2s_lightning.training.data.FeatureDataModule` (kept equal by a test)."""

    features: str = "outputs/features.h5"
    batch_size: int = 64
    val_fraction: float = 0.1
    seed: int = 0
    train_split: str = "train"
    test_split: str = "test"
    in_memory_max_bytes: int = 2 * 1024**3
    num_workers: int = 0
    model_name: str | None = None
    layer_steer: int | None = None
    layer_context: int | None = None
    hidden_size: int | None = None


@dataclass
class FitConfig:
    """What ``l2s fit`` does (the keys of ``configs/fit/*.yaml``; ``l2s_lightning.training.cli.load_config`` reads
    one).

    Args:
        method: what to build; ``all`` = L2S and every baseline.
        out_dir: steerers, run logs and the report.
        ckpt_path: ``last`` resumes from ``runs/l2s/checkpoints/last.ckpt``.
        default_alpha: α recorded in the steerers.
        keep: L2S weights kept: the final epoch's or the best ``val/mse`` checkpoint's.
        torch_threads: CPU threads while fitting (restored after; the MLP is tiny and extra threads only add
            overhead); None leaves them as they are.
    """

    data: FeatureDataSettings = field(default_factory=FeatureDataSettings)
    model: L2SSettings = field(default_factory=L2SSettings)
    method: FitMethod = "l2s"
    out_dir: str = "outputs/fit"
    ckpt_path: str | None = None
    default_alpha: float = 1.0
    keep: Literal["last", "best"] = "last"
    torch_threads: int | None = 1
    trainer: dict[str, Any] = field(default_factory=lambda: dict(FIT_TRAINER_DEFAULTS))
    seed_everything: int | bool = 0


@dataclass
class FitResult:
    """What a fit wrote: the steerers saved (by method) and the report (None on ranks other than 0)."""

    out_dir: Path
    steerers: dict[str, Steerer]
    report: dict[str, Any] | None


def run_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "runs" / "l2s"


def checkpoint_callbacks(dirpath: Path) -> list:
    """``best-epochNNN.ckpt`` (lowest val/mse) and ``last.ckpt`` rewritten after every epoch.

    (Lightning 2.6 writes ``save_last`` only in epochs that also saved a top-k checkpoint, so the last
    checkpoint is a monitor-less top-1 named ``last``; ``ckpt_path="last"`` finds it by name.)
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    best = ModelCheckpoint(
        dirpath=dirpath,
        filename="best-epoch{epoch:03d}",
        monitor="val/mse",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # at every epoch's end (after its validation, if any): not only in epochs that validate
    last = ModelCheckpoint(
        dirpath=dirpath,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    return [best, last]


def fit_trainer(cfg: FitConfig):
    """The Trainer of a fit: ``cfg.trainer`` over :data:`FIT_TRAINER_DEFAULTS`, CSV and TensorBoard loggers and
    checkpoints under ``<out_dir>/runs/l2s`` (unless configured), and the training curves."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    root = run_dir(cfg.out_dir)
    kwargs = {**FIT_TRAINER_DEFAULTS, **cfg.trainer}
    if kwargs.get("logger") in (None, True):
        kwargs["logger"] = [CSVLogger(root, name="csv"), TensorBoardLogger(root, name="tb", default_hp_metric=False)]
    kwargs["default_root_dir"] = kwargs.get("default_root_dir") or str(root)
    callbacks = as_list(kwargs.get("callbacks"))
    if not any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
        callbacks += checkpoint_callbacks(root / "checkpoints")
    kwargs["callbacks"] = [*callbacks, TrainingCurves()]
    return Trainer(**kwargs)


def run(cfg: FitConfig) -> FitResult:
    """Fit what ``cfg.method`` asks for with ``cfg.torch_threads`` CPU threads (restored after)."""
    threads = torch.get_num_threads()
    try:
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        return _fit(cfg)
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: FitConfig) -> FitResult:
    seed = seed_run(cfg.seed_everything)
    data = FeatureDataModule(**fields_dict(cfg.data))
    model = L2SModule(dim=data.dim, **fields_dict(cfg.model))
    trainer = fit_trainer(cfg)
    console = Console(stderr=True)
    out_dir = Path(cfg.out_dir)
    methods = list(STEERER_METHODS) if cfg.method == "all" else [cfg.method]
    data.setup("fit")  # every data check (empty split, NaN rows) before any work
    if cfg.method == "p2s_oracle" and len(data.test_indices) == 0:
        raise L2SInputError(
            f"--method p2s_oracle: {data.file.path} has no rows in split {cfg.data.test_split!r}; the oracle "
            "steers each test input with its own z: extract the test split too (data.splits=[train, test])"
        )
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fit_config.yaml").write_text(yaml.safe_dump(config_record(cfg), sort_keys=False))

    steerers: dict[str, tuple[Steerer, bool]] = {}
    if "l2s" in methods:
        _train_l2s(cfg, trainer, model, data, console)
        info = {
            "epochs": trainer.current_epoch,
            "keep": cfg.keep,
            "val_fraction": cfg.data.val_fraction,
            "data_seed": cfg.data.seed,
        }
        steerers["l2s"] = (
            l2s_steerer(model, data.file, data.train_indices, default_alpha=cfg.default_alpha, seed=seed, info=info),
            True,
        )
    elif (out_dir / "steerers" / "l2s" / "steerer.json").is_file():
        previous = Steerer.load(out_dir / "steerers" / "l2s")
        if previous.fingerprint == data.file.fingerprint(data.train_indices):
            steerers["l2s"] = (previous, True)
    if not trainer.is_global_zero:
        return FitResult(out_dir, {}, None)
    has_test = len(data.test_indices) > 0
    for method in BASELINES:
        requested = method in methods
        if method == "p2s_oracle" and not has_test:  # (asked for alone, refused above)
            continue
        try:
            steerer = build_baseline(
                method,
                data.file,
                seed,
                rows=data.train_indices,
                test_split=cfg.data.test_split,
                default_alpha=cfg.default_alpha,
            )
        except ValueError as err:
            if requested:
                raise
            console.print(f"[yellow]{method} left out of the comparison[/]: {err}")
            continue
        steerers[method] = (steerer, requested)
    saved = {method: steerer for method, (steerer, keep) in steerers.items() if keep and method in methods}
    for method, steerer in saved.items():
        steerer.save(out_dir / "steerers" / method)
    report = _report(steerers, data)
    (out_dir / "fit_report.json").write_text(json.dumps(report, indent=2))
    _print_report(report, console)
    console.print(f"[green]steerers[/] in {out_dir / 'steerers'}; report {out_dir / 'fit_report.json'}")
    return FitResult(out_dir, saved, report)


def _fresh_start(root: Path, console: Console) -> None:
    """A run without ``ckpt_path`` starts over: old logs go (last.ckpt is overwritten)."""
    stale = [root / "csv", root / "tb", root / "checkpoints"]
    if any(p.exists() for p in stale):
        console.print(
            f"[yellow]starting over[/] in {root} (old logs and checkpoints removed; use --ckpt_path last to resume)"
        )
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)


def _train_l2s(cfg: FitConfig, trainer, model: L2SModule, data: FeatureDataModule, console: Console) -> None:
    if cfg.ckpt_path is None and trainer.is_global_zero:
        _fresh_start(run_dir(cfg.out_dir), console)
    last = run_dir(cfg.out_dir) / "checkpoints" / "last.ckpt"
    resume = resume_checkpoint(cfg.ckpt_path, last)

    def stopped() -> str:
        if last.is_file():
            return (
                f"fit stopped by SIGTERM in epoch {trainer.current_epoch}; {last} holds the last finished epoch: "
                "run again with --ckpt_path last to resume"
            )
        return f"fit stopped by SIGTERM in epoch {trainer.current_epoch}, before any epoch finished: run it again"

    with sigterm_as_terminated(stopped):
        trainer.fit(model, datamodule=data, ckpt_path=resume, weights_only=True)
    if cfg.keep == "best":
        best = next(
            (cb.best_model_path for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) == "val/mse"), ""
        )
        if not best:
            raise L2SInputError("--keep best: no best checkpoint was saved (is validation running?)")
        folder = last.parent.resolve()
        if Path(best).resolve().parent != folder:
            raise L2SInputError(f"--keep best: the best checkpoint {best} is not in this run's {folder}; not loaded")
        model.load_state_dict(read_checkpoint(Path(best), "--keep best")["state_dict"])
        console.print(f"kept the best checkpoint: {best}")


def resume_checkpoint(ckpt_path: str | None, last: Path) -> Path | None:
    """The checkpoint a fit resumes from: ``None`` (start over), ``last`` (``last``, when it exists) or a file in
    the run's own checkpoint folder, checked readable (weights only) before any work."""
    if ckpt_path is None or (ckpt_path == "last" and not last.is_file()):
        return None
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if path.resolve().parent != last.parent.resolve():
        raise L2SInputError(
            f"--ckpt_path {ckpt_path}: only a checkpoint of this run's folder {last.parent} is resumed ('last' or a "
            "file there)"
        )
    read_checkpoint(path, f"--ckpt_path {ckpt_path}")  # a torn or foreign file is named before any work
    return path


def read_checkpoint(path: Path, why: str) -> dict[str, Any]:
    """A Lightning checkpoint's tensors and plain values (``weights_only``: no pickled code runs); an
    L2SInputError naming ``path`` when it cannot be read so."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn file, or one holding objects other than tensors and plain values
        raise L2SInputError(
            f"{why}: {path} is not a readable checkpoint ({str(err).splitlines()[0]}); delete it and run without "
            "--ckpt_path to start over"
        ) from None


def _report(steerers: dict[str, tuple[Steerer, bool]], data: FeatureDataModule) -> dict[str, Any]:
    methods = {}
    for method, (steerer, saved) in steerers.items():
        methods[method] = {
            "saved": saved,
            "val": evaluate_steerer(steerer, data.file, data.val_indices),
            "test": evaluate_steerer(steerer, data.file, data.test_indices),
        }
    return {
        "features": str(data.file.path),
        "model": data.file.meta.model,
        "layer_steer": data.file.meta.layer_steer,
        "layer_context": data.file.meta.layer_context,
        "rows": {"train": len(data.train_indices), "val": len(data.val_indices), "test": len(data.test_indices)},
        "fingerprint": data.file.fingerprint(data.train_indices),
        "methods": methods,
    }


def _print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"l2s fit: {report['model']} L*={report['layer_steer']} L'={report['layer_context']} "
        f"(rows {report['rows']})"
    )
    for column in ("method", "val cos", "val MSE", "test cos", "test MSE", "saved"):
        table.add_column(column, justify="left" if column == "method" else "right")

    def cell(result: dict[str, float] | None, key: str) -> str:
        return "–" if result is None else f"{result[key]:.4f}" if key == "cos" else f"{result[key]:.4g}"

    for method, result in report["methods"].items():
        table.add_row(
            method,
            cell(result["val"], "cos"),
            cell(result["val"], "mse"),
            cell(result["test"], "cos"),
            cell(result["test"], "mse"),
            "yes" if result["saved"] else "no: compared only",
        )
    console.print(table)
