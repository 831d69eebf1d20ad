"""`WriterCLI`: the LightningCLI shape shared by `l2s extract` and `l2s predict`.

A prediction writer is an always-present, configurable callback (``--writer.output``), and a Rich progress
bar is added unless ``--trainer.enable_progress_bar false``.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI


class WriterCLI(LightningCLI):
    """Subclasses set ``writer_class``; ``run=False`` style: the caller runs ``trainer.predict``."""

    writer_class: type

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(self.writer_class, "writer")

    def instantiate_trainer(self, **kwargs: Any):
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        if trainer_config.get("enable_progress_bar", True) is not False:
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [RichProgressBar()]}
        return super().instantiate_trainer(**kwargs)

    @property
    def writer(self):
        return next(cb for cb in self.trainer.callbacks if isinstance(cb, self.writer_class))


def make_cli(cli_class: type[WriterCLI], module_class: type, data_class: type, argv: list[str] | None) -> WriterCLI:
    """Parse ``argv`` and instantiate model, data, trainer and writer (no run)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args.*sys.argv.*")
        return cli_class(
            module_class,
            data_class,
            run=False,
            args=argv,
            save_config_callback=None,
            trainer_defaults={"logger": False, "enable_checkpointing": False},
        )
