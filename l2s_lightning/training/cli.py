"""`l2s fit`: train the L2S network (an MLP mapping the context h to the steering vector z) on features.h5
and/or build the baseline steerers (mean, mean_ba, random, p2s_oracle) from it, then compare them on the held-out
rows. Writes one steerer folder per method under ``--out_dir``; ``--ckpt_path last`` resumes a killed training.

    l2s fit --config configs/fit/smollm2.yaml [--method l2s|mean|mean_ba|random|p2s_oracle|all]
            [--ckpt_path last] [--out_dir DIR] [--model.lr 5e-5] [--trainer.max_epochs 20] ...

Layout of ``out_dir``: ``steerers/<method>/`` (steerer folders), ``runs/l2s/`` (``checkpoints/last.ckpt``,
CSV and TensorBoard logs, ``curves.png``), ``fit_config.yaml`` and ``fit_report.json`` (validation and
test MSE / cosine of every method). ``--ckpt_path last`` resumes a killed run from ``last.ckpt``.

The command parses its arguments into a :class:`~l2s_lightning.stages.fit.FitConfig` and runs
:func:`l2s_lightning.stages.fit.run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from l2s_lightning.stages import fit
from l2s_lightning.stages.fit import FIT_TRAINER_DEFAULTS, FitConfig, FitMethod, checkpoint_callbacks, run_dir
from l2s_lightning.training.data import FeatureDataModule
from l2s_lightning.training.module import L2SModule
from l2s_lightning.writer_cli import StageCLI, load_stage_config, parse_stage_config

Method = FitMethod
_DEFAULT = {field.name: field.default for field in dataclasses.fields(FitConfig)}  # the command's defaults

__all__ = ["FitCLI", "Method", "checkpoint_callbacks", "fit_main", "load_config", "run_dir"]


class FitCLI(StageCLI[FitConfig]):
    """LightningCLI with ``--method``, ``--out_dir``, ``--ckpt_path``, ``--default_alpha``, ``--keep`` and
    ``--torch_threads``; the module's ``dim`` is not an argument (the stage takes it from the features file)."""

    command = "l2s fit"
    group_titles = StageCLI.group_titles | {"model": "the L2S network g and its training", "data": "the features file"}
    config_class = FitConfig
    module_class = L2SModule
    data_class = FeatureDataModule
    default_trainer = FIT_TRAINER_DEFAULTS
    default_seed = 0

    def add_core_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_class_arguments(L2SModule, "model", fail_untyped=False, sub_configs=True, skip={"dim"})
        parser.add_lightning_class_args(FeatureDataModule, "data")

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--method", type=Method, default=_DEFAULT["method"], help="what to build; `all` = L2S and every baseline"
        )
        parser.add_argument(
            "--out_dir", type=str, default=_DEFAULT["out_dir"], help="steerers, run logs and the report"
        )
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=_DEFAULT["ckpt_path"],
            help="`last` resumes from runs/l2s/checkpoints/last.ckpt",
        )
        parser.add_argument("--default_alpha", type=float, default=_DEFAULT["default_alpha"], help="α in the steerers")
        parser.add_argument(
            "--keep",
            type=Literal["last", "best"],
            default=_DEFAULT["keep"],
            help="L2S weights kept: final epoch or best val/mse",
        )
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=_DEFAULT["torch_threads"],
            help="CPU threads while fitting (restored after); the MLP is tiny and extra threads only add overhead; "
            "null = leave as is",
        )


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None, args: Sequence[str] = ()) -> FitConfig:
    """The :class:`FitConfig` of a fit YAML (``configs/fit/*.yaml``), ``args`` / dotted ``overrides`` applied as
    ``l2s fit`` applies its command line."""
    return load_stage_config(FitCLI, path, overrides, args)


def fit_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s fit``; returns the exit status."""
    fit.run(parse_stage_config(FitCLI, argv))
    return 0
