"""Focused output of the ``l2s`` commands: :func:`quiet_output` drops Lightning's tips, repeated info lines and
known third-party warnings while a command runs; :func:`progress` shows a long step of our own on stderr."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator

LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",  # the tips, "GPU available: ...", "TPU available: ..."
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",  # "Seed set to ..."
    "lightning.pytorch.accelerators.cuda",  # "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"
)
"""The loggers :func:`quiet_output` filters (Lightning logs these lines with no switch to turn them off)."""

ONCE_PREFIXES = ("Seed set to", "GPU available:", "TPU available:", "LOCAL_RANK:")
"""Info lines shown once per process (each distinct line): every stage and Trainer repeats them."""

KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # torch >= 2.9 deprecates the LeafSpec that Lightning's own _pytree helper builds at every predict
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\."),
    # a fit on few batches: Lightning's hint about its own step logging (our fit report has the figures)
    (r"The number of training batches \(\d+\) is smaller than the logging interval", Warning, r"lightning\.pytorch\."),
)
"""(message regex, category, module regex) of the third-party warnings :func:`quiet_output` ignores."""

ProgressHook = Callable[[int, int], None]
"""Called with (done, total) each time a long step advances."""

_shown: set[str] = set()
_depth = 0


class LightningNoise(logging.Filter):
    """Drops Lightning's "💡 Tip" lines and the :data:`ONCE_PREFIXES` lines already shown in this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.lstrip().startswith("💡") and "Tip:" in message:
            return False
        if message.startswith(ONCE_PREFIXES):
            if message in _shown:
                return False
            _shown.add(message)
        return True


_FILTER = LightningNoise()


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """While the block runs: :class:`LightningNoise` on :data:`LIGHTNING_LOGGERS` and :data:`KNOWN_WARNINGS`
    ignored; both undone after it (nested blocks share the outermost one)."""
    global _depth
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    with warnings.catch_warnings():
        for message, category, module in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        _depth += 1
        if _depth == 1:
            for logger in loggers:
                logger.addFilter(_FILTER)
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                for logger in loggers:
                    logger.removeFilter(_FILTER)


@contextlib.contextmanager
def progress(
    description: str, total: int, hook: ProgressHook | None = None, show: bool = True
) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar of ``total`` units on stderr (where stderr is no terminal: a start and a finish line;
    ``show=False``: nothing shown); yields ``advance(n)`` (thread-safe), which also calls ``hook(done, total)``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True, quiet=not show)
    bar = None
    if show and console.is_terminal:
        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        bar = Progress("{task.description}", *columns, console=console)
        task = bar.add_task(description, total=total)
    else:
        console.print(f"{description}: {total} to do", highlight=False)
    lock, done, start = threading.Lock(), 0, time.monotonic()

    def advance(n: int = 1) -> None:
        nonlocal done
        with lock:
            done += n
            if bar is not None:
                bar.update(task, completed=done)
            if hook is not None:
                hook(done, total)

    with bar if bar is not None else contextlib.nullcontext():
        yield advance
    if bar is None:
        console.print(f"{description}: {done}/{total} done in {time.monotonic() - start:.1f} s", highlight=False)
