"""`StageCLI`: the LightningCLI of a stage, parsing only: YAML + overrides → the stage's typed config.

``l2s extract``, ``l2s fit`` and ``l2s predict`` parse their arguments with it (``--config``, ``--print_config``,
dotted overrides, ``--trainer.*``), then call the stage function with ``stage_config``; ``l2s run`` and
``l2s sweep`` read the stages' YAML configs through the same parser (:func:`load_stage_config`). `WriterCLI` adds
the prediction writer of ``l2s extract`` / ``l2s predict`` (``--writer.output``).
"""

from __future__ import annotations

import warnings
from argparse import ArgumentError
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from lightning.pytorch.cli import LightningCLI

from l2s_lightning.config import build_dataclass, nest
from l2s_lightning.errors import L2SInputError
from l2s_lightning.stages.common import WRITER_TRAINER_DEFAULTS

ConfigT = TypeVar("ConfigT")

# parser keys that are no setting of a stage: the config file, and the optimizer groups LightningCLI adds
_CLI_ONLY_KEYS = ("config", "optimizer", "lr_scheduler")


class StageCLI(LightningCLI, Generic[ConfigT]):
    """Parses ``args`` (then ``overrides``, dotted keys, through the same parser) into ``stage_config``, a
    ``config_class``: class-typed values (the data source, callbacks) are instantiated, the LightningModule, data
    module and Trainer are not (the stage builds them). Subclasses set the class attributes below."""

    command: ClassVar[str]  # "l2s extract", in messages
    config_class: ClassVar[type]
    module_class: ClassVar[type]
    data_class: ClassVar[type]
    default_trainer: ClassVar[dict[str, Any]] = {}
    default_seed: ClassVar[bool | int] = True
    optimizer_args: ClassVar[bool] = True  # LightningCLI's --optimizer / --lr_scheduler groups (parsed, unused)
    parser_settings: ClassVar[dict[str, Any]] = {}

    stage_config: ConfigT

    def __init__(
        self,
        args: Sequence[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        parser_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.overrides = dict(overrides or {})
        with warnings.catch_warnings():  # `l2s <stage> ...` hands over its own argv: not a mix-up of two command lines
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().__init__(
                self.module_class,
                self.data_class,
                run=False,
                args=None if args is None else list(args),
                save_config_callback=None,
                trainer_defaults=dict(self.default_trainer),
                seed_everything_default=self.default_seed,
                auto_configure_optimizers=self.optimizer_args,
                parser_kwargs={**self.parser_settings, **(parser_kwargs or {})},
            )

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        if self.overrides:
            self.config = parser.parse_object(nest(self.overrides), self.config)

    def instantiate_classes(self) -> None:
        values = self.parser.instantiate(self.config, instantiate_groups=False).as_dict()
        settings = {key: value for key, value in values.items() if key not in _CLI_ONLY_KEYS}
        self.stage_config = build_dataclass(self.config_class, settings, where=self.command)


class WriterCLI(StageCLI[ConfigT]):
    """``l2s extract`` / ``l2s predict``: the writer's arguments under ``--writer`` (``writer_class``)."""

    writer_class: ClassVar[type]
    default_trainer = WRITER_TRAINER_DEFAULTS

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(self.writer_class, "writer")


def parse_stage_config(cli_class: type[StageCLI[ConfigT]], argv: Sequence[str] | None) -> ConfigT:
    """The typed config of a stage's command line (``--print_config`` prints it and exits)."""
    return cli_class(argv).stage_config


def load_stage_config(
    cli_class: type[StageCLI[ConfigT]],
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    args: Sequence[str] = (),
) -> ConfigT:
    """The typed config of a stage's YAML ``path``, with ``args`` (command-line style, the older form) and then
    ``overrides`` (dotted keys, e.g. ``{"data.batch_size": 8}``) applied by the stage's own parser; a bad file,
    key or value is an :class:`L2SInputError` naming ``path``."""
    try:
        cli = cli_class(["--config", str(path), *args], overrides=overrides, parser_kwargs={"exit_on_error": False})
    except ArgumentError as err:
        raise L2SInputError(f"{path}: {err}") from None
    return cli.stage_config
