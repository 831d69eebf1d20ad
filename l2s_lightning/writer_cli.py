"""`StageCLI`: the LightningCLI of a stage, parsing only: YAML + overrides → the stage's typed config.

``l2s extract``, ``l2s fit`` and ``l2s predict`` parse their arguments with it (``--config``, ``--print_config``,
dotted overrides, ``--trainer.*``), then call the stage function with ``stage_config``; ``l2s run`` and
``l2s sweep`` read the stages' YAML configs through the same parser (:func:`load_stage_config`). `WriterCLI` adds
the prediction writer of ``l2s extract`` / ``l2s predict`` (``--writer.output``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from l2s_lightning.cli_help import HelpFormatter, ShortHelpFormatter, describe, tidy_help
from l2s_lightning.config import build_dataclass, nest
from l2s_lightning.errors import L2SInputError
from l2s_lightning.stages.common import WRITER_TRAINER_DEFAULTS

ConfigT = TypeVar("ConfigT")

USAGE = "%(prog)s [-h] [--config FILE] [--print_config] [--GROUP.OPTION VALUE ...]"


class _HelpIn(argparse._HelpAction):
    """``--help-full`` / ``--help-trainer``: the help in another :attr:`StageParser.help_mode`, then exit."""

    def __init__(self, option_strings: list[str], mode: str, **kwargs: Any) -> None:
        super().__init__(option_strings, **kwargs)
        self.mode = mode

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        parser.help_mode = self.mode
        super().__call__(parser, namespace, values, option_string)


class StageParser(LightningArgumentParser):
    """The parser of a stage: ``--help`` shows the gist of the stage's own options, ``--help-trainer`` of the
    Trainer's, ``--help-full`` every option in full."""

    help_mode = "short"  # "short", "trainer" or "full"

    def format_help(self, formatter: argparse.HelpFormatter | None = None) -> str:
        trainer = {id(group) for key, group in (self.groups or {}).items() if key.split(".")[0] == "trainer"}
        saved = self._action_groups, self.epilog, self.formatter_class
        ours = [group for group in saved[0] if id(group) not in trainer]
        theirs = [group for group in saved[0] if id(group) in trainer]
        self._action_groups = {"short": ours, "trainer": theirs, "full": ours + theirs}[self.help_mode]
        if self.help_mode != "full":
            self.formatter_class = ShortHelpFormatter
        if self.help_mode != "short":
            self.epilog = None
        try:
            return super().format_help(formatter)
        finally:
            self._action_groups, self.epilog, self.formatter_class = saved


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
    group_titles: ClassVar[dict[str, str]] = {
        "trainer": "Lightning's Trainer",
        "model.model": "the LLM to load",
    }  # --help

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
                auto_configure_optimizers=False,  # no --optimizer / --lr_scheduler: each module sets its own
                parser_kwargs=dict(parser_kwargs or {}),
                parser_class=StageParser,
            )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """A :class:`StageParser` named after the command, its description the module docstring's first paragraph."""
        epilog = f"Trainer options (--trainer.*): {self.command} --help-trainer"
        description = describe(sys.modules[type(self).__module__].__doc__)
        kwargs = dict(prog=self.command, usage=USAGE, description=description, epilog=epilog) | kwargs
        parser = super().init_parser(formatter_class=HelpFormatter, **kwargs)
        parser.add_argument("--help-full", action=_HelpIn, mode="full", help="show every option in full and exit")
        parser.add_argument(
            "--help-trainer", action=_HelpIn, mode="trainer", help="show the Trainer's options and exit"
        )
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """LightningCLI's parser, with short built-in help texts and our group titles (``group_titles``)."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        tidy_help(self.parser)
        for key, group in (self.parser.groups or {}).items():
            group.title = f"{key}: {self.group_titles[key]}" if key in self.group_titles else key

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        if self.overrides:
            self.config = parser.parse_object(nest(self.overrides), self.config)

    def instantiate_classes(self) -> None:
        values = self.parser.instantiate(self.config, instantiate_groups=False).as_dict()
        settings = {key: value for key, value in values.items() if key != "config"}
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
