"""The ``l2s`` command: ``l2s <extract|fit|predict|evaluate|sweep|run> [options]``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")
TRACEBACK_ENV = "L2S_TRACEBACK"  # set to 1 to see the traceback of a bad-input error

COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("l2s_lightning.extraction.cli:extract_main", "P2S features (h, z) of a dataset into features.h5"),
    "fit": ("l2s_lightning.training.cli:fit_main", "train the L2S network or build a baseline steerer"),
    "predict": ("l2s_lightning.generation.cli:predict_main", "steered generation to JSONL"),
    "evaluate": ("l2s_lightning.evaluation.cli:evaluate_main", "metrics, tables and plots of predictions"),
    "sweep": ("l2s_lightning.sweep:sweep_main", "alpha sweep of a steerer; picks alpha within a quality budget"),
    "run": ("l2s_lightning.pipeline:run_main", "the whole loop: extract, fit, predict, evaluate"),
}


def _load(target: str) -> Callable[[list[str]], int]:
    module, name = target.split(":")
    return getattr(import_module(module), name)


def parse_dataclass_config(cls: type[ConfigT], prog: str, description: str | None, argv: list[str] | None) -> ConfigT:
    """A config dataclass from ``--config FILE`` and/or ``--field value`` arguments (jsonargparse)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(cls, nested_key=None)
    parsed: Any = parser.parse_args(argv)
    return cls(**{k: v for k, v in parsed.items() if k in cls.__dataclass_fields__})  # type: ignore[attr-defined]


def usage() -> str:
    lines = ["usage: l2s <command> [--config FILE] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; each one parses its own arguments. A bad-input error (``ValueError``,
    ``OSError``) is printed as one message and exits with status 2, without a traceback (``L2S_TRACEBACK=1``
    re-raises it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"l2s: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        result = _load(COMMANDS[command][0])(rest)
    except Exception as error:  # bad input: the message names the file / field at fault
        if not isinstance(error, bad_input_errors()) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"l2s {command}: error: {error_message(error)}\n({TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr)
        return 2
    return int(result or 0)


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that report bad input (a config, a path, a setting the machine cannot honour), not a bug."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return (ValueError, OSError, MisconfigurationException)


def error_message(error: BaseException) -> str:
    """A one-line account of a bad-input error (an OSError names its file)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    return str(error) or type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
