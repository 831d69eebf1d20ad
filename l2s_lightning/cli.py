"""The ``l2s`` command: ``l2s <extract|fit|predict|evaluate|sweep|run|tune> [options]``; it only dispatches (each
command's module parses its own arguments)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module

from l2s_lightning.errors import run_reporting_errors

COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("l2s_lightning.extraction.cli:extract_main", "P2S features (h, z) of a dataset into features.h5"),
    "fit": ("l2s_lightning.training.cli:fit_main", "train the L2S network or build a baseline steerer"),
    "predict": ("l2s_lightning.generation.cli:predict_main", "steered generation to JSONL"),
    "evaluate": ("l2s_lightning.evaluation.cli:evaluate_main", "metrics, tables and plots of predictions"),
    "sweep": ("l2s_lightning.sweep:sweep_main", "alpha sweep of a steerer; picks alpha within a quality budget"),
    "run": ("l2s_lightning.pipeline:run_main", "the whole loop: extract, fit, predict, evaluate"),
    "tune": ("l2s_lightning.tune:tune_main", "choose L*, L', alpha and positions on a validation split"),
    "cache": ("l2s_lightning.models.cache_cli:cache_main", "list (info) or delete (clear) the dequantised GGUF models"),
}


def _load(target: str) -> Callable[[list[str]], int]:
    module, name = target.split(":")
    return getattr(import_module(module), name)


def usage() -> str:
    """``l2s --help``: the command list, and where each command's options are."""
    lines = ["usage: l2s <command> [--config FILE] [--option value ...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "l2s <command> --help lists that command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; each one parses its own arguments. Errors are reported by
    :func:`l2s_lightning.errors.run_reporting_errors`: bad input as one line with exit status 2, a judge that
    could not score with 3, a bug with its traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"l2s: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_reporting_errors(f"l2s {command}", lambda: _load(COMMANDS[command][0])(rest))


if __name__ == "__main__":
    raise SystemExit(main())
