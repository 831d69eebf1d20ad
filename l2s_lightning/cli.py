"""The ``l2s`` command: ``l2s <extract|fit|predict|evaluate|sweep|run> [options]``."""

from __future__ import annotations

import linecache
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
    """Dispatch to a sub-command; each one parses its own arguments. A bad-input error (:func:`is_bad_input`)
    is printed as a message, without a traceback, and exits with status 2 (``L2S_TRACEBACK=1`` re-raises it);
    any other error keeps its traceback."""
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
    except Exception as error:
        if not is_bad_input(error) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"l2s {command}: error: {error_message(error, command)}\n({TRACEBACK_ENV}=1 shows the traceback)", file=sys.stderr)
        return 2
    return int(result or 0)


def is_bad_input(error: BaseException) -> bool:
    """Whether ``error`` reports bad input rather than a bug: a ``ValueError`` / ``OSError`` this package raised
    on purpose (its message names the file, sample or field at fault), an ``OSError`` from anywhere (a path
    that cannot be read or written), or Lightning's ``MisconfigurationException`` (a setting the machine
    cannot honour, e.g. a GPU accelerator on a machine without one)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(error, (OSError, MisconfigurationException)):
        return True
    return isinstance(error, ValueError) and _raised_here_on_purpose(error)


def _raised_here_on_purpose(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is a ``raise`` statement of this package (not, say,
    a failed unpacking in it, or a check inside a library)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    package = os.path.dirname(os.path.abspath(__file__))
    if not os.path.abspath(filename).startswith(package + os.sep):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def error_message(error: BaseException, command: str = "") -> str:
    """The account of a bad-input error (an OSError names its file), without a repeated ``l2s <command>:``."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    text = str(error) or type(error).__name__
    prefix = f"l2s {command}: "
    return text[len(prefix):] if command and text.startswith(prefix) else text


if __name__ == "__main__":
    raise SystemExit(main())
