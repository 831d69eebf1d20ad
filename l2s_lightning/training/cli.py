"""`l2s fit`: train the L2S network on features.h5 and/or build the baseline steerers, then compare them.

    l2s fit --config configs/fit/smollm2.yaml [--method l2s|mean|mean_ba|random|p2s_oracle|all]
            [--ckpt_path last] [--out_dir DIR] [--model.lr 5e-5] [--trainer.max_epochs 20] ...

Layout of ``out_dir``: ``steerers/<method>/`` (steerer folders), ``runs/l2s/`` (``checkpoints/last.ckpt``,
CSV and TensorBoard logs, ``curves.png``), ``fit_config.yaml`` and ``fit_report.json`` (validation and
test MSE / cosine of every method). ``--ckpt_path last`` resumes a killed run from ``last.ckpt``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from rich.console import Console
from rich.table import Table

from l2s_lightning.errors import L2SInputError
from l2s_lightning.steerer import METHODS, Steerer
from l2s_lightning.training.baselines import BASELINES, build_baseline, evaluate_steerer, l2s_steerer
from l2s_lightning.training.curves import TrainingCurves
from l2s_lightning.training.data import FeatureDataModule
from l2s_lightning.training.module import L2SModule

Method = Literal["l2s", "mean", "mean_ba", "random", "p2s_oracle", "all"]


def run_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "runs" / "l2s"


class FitCLI(LightningCLI):
    """LightningCLI with ``--method``, ``--out_dir``, ``--ckpt_path``, ``--default_alpha``, ``--keep``; the
    module's ``dim`` is linked from the data; loggers and checkpoints go under ``<out_dir>/runs/l2s``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--method", type=Method, default="l2s", help="what to build; `all` = L2S and every baseline"
        )
        parser.add_argument("--out_dir", type=str, default="outputs/fit", help="steerers, run logs and the report")
        parser.add_argument(
            "--ckpt_path", type=str | None, default=None, help="`last` resumes from runs/l2s/checkpoints/last.ckpt"
        )
        parser.add_argument("--default_alpha", type=float, default=1.0, help="α recorded in the steerers")
        parser.add_argument(
            "--keep", type=Literal["last", "best"], default="last", help="L2S weights kept: final epoch or best val/mse"
        )
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=1,
            help="CPU threads while fitting (restored after); the MLP is tiny and extra threads only add overhead; null = leave as is",
        )
        parser.link_arguments("data.dim", "model.dim", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any):
        root = run_dir(self._get(self.config, "out_dir"))
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = [
                CSVLogger(root, name="csv"),
                TensorBoardLogger(root, name="tb", default_hp_metric=False),
            ]
        trainer_config["default_root_dir"] = trainer_config.get("default_root_dir") or str(root)
        callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        configured = trainer_config.get("callbacks") or []
        if not any(isinstance(cb, ModelCheckpoint) for cb in configured):
            callbacks += checkpoint_callbacks(root / "checkpoints")
        callbacks.append(TrainingCurves())
        return self._instantiate_trainer(trainer_config, callbacks)


def checkpoint_callbacks(dirpath: Path) -> list[ModelCheckpoint]:
    """``best-epochNNN.ckpt`` (lowest val/mse) and ``last.ckpt`` rewritten after every epoch.

    (Lightning 2.6 writes ``save_last`` only in epochs that also saved a top-k checkpoint, so the last
    checkpoint is a monitor-less top-1 named ``last``; ``ckpt_path="last"`` finds it by name.)
    """
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


def _fresh_start(root: Path, console: Console) -> None:
    """A run without ``--ckpt_path`` starts over: old logs go (last.ckpt is overwritten)."""
    stale = [root / "csv", root / "tb", root / "checkpoints"]
    if any(p.exists() for p in stale):
        console.print(
            f"[yellow]starting over[/] in {root} (old logs and checkpoints removed; use --ckpt_path last to resume)"
        )
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)


def _train_l2s(cli: FitCLI, console: Console) -> None:
    cfg, trainer, model, data = cli.config, cli.trainer, cli.model, cli.datamodule
    if cfg.ckpt_path is None and trainer.is_global_zero:
        _fresh_start(run_dir(cfg.out_dir), console)
    trainer.fit(model, datamodule=data, ckpt_path=cfg.ckpt_path)
    if cfg.keep == "best":
        best = next(
            (cb.best_model_path for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None) == "val/mse"), ""
        )
        if not best:
            raise RuntimeError("--keep best: no best checkpoint was saved (is validation running?)")
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
        console.print(f"kept the best checkpoint: {best}")


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


def _print_report(report: dict[str, Any], out_dir: Path, console: Console) -> None:
    table = Table(
        title=f"l2s fit: {report['model']} L*={report['layer_steer']} L'={report['layer_context']} (rows {report['rows']})"
    )
    for column in ("method", "val cos", "val MSE", "test cos", "test MSE", "steerer"):
        table.add_column(column, justify="left" if column in ("method", "steerer") else "right")

    def cell(result: dict[str, float] | None, key: str) -> str:
        return "–" if result is None else f"{result[key]:.4f}" if key == "cos" else f"{result[key]:.4g}"

    for method, result in report["methods"].items():
        where = str(out_dir / "steerers" / method) if result["saved"] else "(not saved)"
        table.add_row(
            method,
            cell(result["val"], "cos"),
            cell(result["val"], "mse"),
            cell(result["test"], "cos"),
            cell(result["test"], "mse"),
            where,
        )
    console.print(table)


def fit_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s fit``; returns the exit status."""
    with warnings.catch_warnings():  # `l2s fit ...` hands over its own argv: not a mix-up of two command lines
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = FitCLI(
            L2SModule,
            FeatureDataModule,
            run=False,
            args=argv,
            save_config_callback=None,
            auto_configure_optimizers=False,
            seed_everything_default=0,
            trainer_defaults={"max_epochs": 100, "deterministic": True, "log_every_n_steps": 10},
            parser_kwargs={"prog": "l2s fit", "description": __doc__.split("\n\n")[0], "default_env": False},
        )
    threads = torch.get_num_threads()
    try:
        if cli.config.torch_threads:
            torch.set_num_threads(cli.config.torch_threads)
        return _run(cli)
    finally:
        torch.set_num_threads(threads)


def _run(cli: FitCLI) -> int:
    cfg, data = cli.config, cli.datamodule
    console = Console(stderr=True)
    out_dir = Path(cfg.out_dir)
    seed = int(cfg.seed_everything) if not isinstance(cfg.seed_everything, bool) else 0
    methods = list(METHODS) if cfg.method == "all" else [cfg.method]
    data.setup("fit")  # every data check (empty split, NaN rows) before any work
    if cfg.method == "p2s_oracle" and len(data.test_indices) == 0:
        raise L2SInputError(
            f"--method p2s_oracle: {data.file.path} has no rows in split {data.hparams.test_split!r}; the oracle "
            "steers each test input with its own z: extract the test split too (data.splits=[train, test])"
        )
    if cli.trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        cli.parser.save(cfg, out_dir / "fit_config.yaml", overwrite=True, skip_check=True)

    steerers: dict[str, tuple[Steerer, bool]] = {}
    if "l2s" in methods:
        _train_l2s(cli, console)
        info = {
            "epochs": cli.trainer.current_epoch,
            "keep": cfg.keep,
            "val_fraction": data.hparams.val_fraction,
            "data_seed": data.hparams.seed,
        }
        steerers["l2s"] = (
            l2s_steerer(
                cli.model, data.file, data.train_indices, default_alpha=cfg.default_alpha, seed=seed, info=info
            ),
            True,
        )
    elif (out_dir / "steerers" / "l2s" / "steerer.json").is_file():
        previous = Steerer.load(out_dir / "steerers" / "l2s")
        if previous.fingerprint == data.file.fingerprint(data.train_indices):
            steerers["l2s"] = (previous, True)
    if not cli.trainer.is_global_zero:
        return 0
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
                test_split=data.hparams.test_split,
                default_alpha=cfg.default_alpha,
            )
        except ValueError as err:
            if requested:
                raise
            console.print(f"[yellow]{method} left out of the comparison[/]: {err}")
            continue
        steerers[method] = (steerer, requested)
    for method, (steerer, saved) in steerers.items():
        if saved and method in methods:
            steerer.save(out_dir / "steerers" / method)
    report = _report(steerers, data)
    (out_dir / "fit_report.json").write_text(json.dumps(report, indent=2))
    _print_report(report, out_dir, console)
    console.print(f"[green]steerers[/] in {out_dir / 'steerers'}; report {out_dir / 'fit_report.json'}")
    return 0
