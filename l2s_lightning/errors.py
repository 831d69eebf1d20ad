"""The errors a user is shown as one line, and the one rule that turns an error into an exit status.

* :class:`L2SInputError` (a ``ValueError``): bad input, raised by every up-front check; its message names the
  file, sample or field at fault. Exit status 2.
* ``OSError`` (a path that cannot be read or written) and Lightning's ``MisconfigurationException`` (a setting
  the machine cannot honour, e.g. a GPU accelerator without one): bad input too, exit status 2.
* :class:`JudgeError`: a judge could not score. Exit status 3.
* :class:`Terminated`: the run stopped on SIGTERM after the batch in flight; what it wrote is kept. Exit status
  143 (128 + SIGTERM, as a shell reports a process ended by it).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from l2s_lightning.quiet import quiet_output

TRACEBACK_ENV = "L2S_TRACEBACK"  # set to 1 to see the traceback of a bad-input error


class L2SInputError(ValueError):
    """Bad input: the message names the file, sample or field at fault."""


class JudgeError(RuntimeError):
    """A judge could not score (unparseable answer, wrong number of scores, bad value)."""


class JudgeUnavailableError(JudgeError):
    """The judge cannot be reached or loaded; no score of the batch is kept."""


class Terminated(Exception):
    """The run stopped on SIGTERM after its last finished batch; the message says what was kept."""


def exit_status(error: BaseException) -> int | None:
    """2 for bad input, 3 for a judge that could not score, 143 for a run stopped by SIGTERM, None for a bug
    (the traceback is kept)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(error, Terminated):
        return 143
    if isinstance(error, JudgeError):
        return 3
    if isinstance(error, (L2SInputError, OSError, MisconfigurationException)):
        return 2
    return None


def error_message(error: BaseException, command: str = "") -> str:
    """The one-line account of an error (an OSError names its file), without a repeated ``<command>:`` prefix."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    text = str(error) or type(error).__name__
    prefix = f"{command}: "
    return text[len(prefix) :] if command and text.startswith(prefix) else text


def run_reporting_errors(command: str, entry: Callable[[], int | None]) -> int:
    """``entry()``'s exit status, run in :func:`~l2s_lightning.quiet.quiet_output`; an error with an
    :func:`exit_status` is printed as one line (``L2S_TRACEBACK=1`` re-raises it), any other error propagates with
    its traceback."""
    try:
        with quiet_output():
            return int(entry() or 0)
    except Exception as error:
        status = exit_status(error)
        if status is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(
            f"{command}: error: {error_message(error, command)}\n({TRACEBACK_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return status
