"""Writing a whole file atomically, and naming the file an OSError of a failed write is about."""

from __future__ import annotations

import os
from pathlib import Path


def naming_file(error: OSError, path: Path) -> OSError:
    """``error`` with ``path`` as its file name (a failed write, e.g. a full disk, then names the file)."""
    if error.filename:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file of this process, synced, then renamed over ``path``;
    a failed write leaves ``path`` as it was, removes the temporary file and names ``path``."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise naming_file(err, path) from None
    os.replace(tmp, path)
