"""`RankPartWriter`: the resumable-output pattern shared by the HDF5 feature and JSONL prediction writers.

Each rank writes its own part files under ``<output>.parts/`` while running (a kill, even ``kill -9``,
loses at most the batch in flight: the JSONL writer appends to one file per run, flushed and fsynced per
batch; the HDF5 writer writes one complete file per batch under a temporary name and renames it); when
prediction ends, rank 0 merges the final file and every part into ``output`` atomically and removes the
parts. Rows already present anywhere are skipped on a rerun.

One run at a time per output: each rank holds an exclusive lock on ``<output>.rank<R>.lock`` from the start of
prediction until its parts are merged, so a second run on the same output refuses at once, naming the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from l2s_lightning.errors import L2SInputError
from l2s_lightning.files import naming_file

_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}


def hdf5_bytes(fill: Callable[[Any], None]) -> memoryview:
    """An HDF5 file built in memory by ``fill(h5py.File)``: HDF5 never writes to disk itself, so a full disk is
    an OSError of :func:`write_atomically`, not a crash inside the HDF5 library."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        fill(file)
    return buffer.getbuffer()  # no copy of the file


class OutputLock:
    """An exclusive ``flock`` on a lock file that records the holder's pid; released (and the file removed) by
    :meth:`release` or when the process ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0  # the process that took it (a forked copy never releases it)

    def acquire(self, output: Path) -> None:
        """Take the lock, or raise an L2SInputError naming ``output`` and the pid that holds it. On a file system
        without ``flock`` (some NFS / Lustre mounts) the run goes on unlocked, with a warning."""
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise L2SInputError(
                    f"{output} is being written by another run (pid {holder}, lock {self.path}): wait for it to "
                    "end or choose another output"
                ) from None
            except OSError as err:
                os.close(fd)
                if err.errno not in _NO_FLOCK:
                    raise naming_file(err, self.path) from None
                self.path.unlink(missing_ok=True)
                warnings.warn(f"{self.path}: no file locks here ({err.strerror}); {output} is not locked", stacklevel=3)
                return
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # removed by the holder that just released it: lock the new one
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError as err:
                os.close(fd)
                raise naming_file(err, self.path) from None
            self._fd, self._pid = fd, os.getpid()

    def release(self) -> None:
        if self._fd is None:
            return
        if self._pid == os.getpid():
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class RankPartWriter(BasePredictionWriter):
    """Base class: subclasses set ``part_suffix`` and implement ``_open``, ``_close_part`` and ``merge``."""

    part_suffix = ".part"

    def __init__(self, output: str) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self._part: Any = None
        self._next_index = 0
        self._lock: OutputLock | None = None
        self._locked_by_setup = False  # the Trainer's setup took the lock (so its teardown releases it)

    def lock(self, rank: int) -> None:
        """Hold this rank's lock on ``output`` (until :meth:`unlock`); refuse when another run holds it."""
        if self._lock is None:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            lock = OutputLock(self.output.with_name(f"{self.output.name}.rank{rank}.lock"))
            lock.acquire(self.output)
            self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @contextlib.contextmanager
    def locked(self, rank: int) -> Iterator[None]:
        """This rank's lock held for the block: the finished-ids check, the run and the merge."""
        self.lock(rank)
        try:
            yield
        finally:
            self.unlock()

    @property
    def parts_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".parts")

    def part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob(f"*{self.part_suffix}")) if self.parts_dir.is_dir() else []

    def existing_files(self) -> list[Path]:
        """The final output (when present) followed by leftover part files of earlier runs."""
        return ([self.output] if self.output.is_file() else []) + self.part_files()

    def next_part_path(self, trainer: L.Trainer) -> Path:
        """A part path of this rank not used by any earlier run: ``rank<R>-<k><part_suffix>``, k increasing."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"rank{trainer.global_rank}-"
        while (path := self.parts_dir / f"{prefix}{self._next_index}{self.part_suffix}").exists():
            self._next_index += 1
        self._next_index += 1
        return path

    def part(self, trainer: L.Trainer) -> Any:
        """This rank's open part file (a new one per run, never appended across runs)."""
        if self._part is None:
            self._part = self._open(self.next_part_path(trainer))
        return self._part

    def _open(self, path: Path) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def merge(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def close_part(self) -> None:
        if self._part is not None:
            self._part.close()
            self._part = None

    def remove_parts(self) -> None:
        """Delete the part files and the temporary files killed runs left (``*.tmp`` among the parts and a merge's
        ``<output>.<pid>.tmp``), then the empty folder."""
        leftovers = sorted(self.parts_dir.glob("*.tmp")) if self.parts_dir.is_dir() else []
        leftovers += sorted(self.output.parent.glob(f"{self.output.name}.*.tmp"))
        for path in self.part_files() + leftovers:
            path.unlink()
        if self.parts_dir.is_dir() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()

    def merge_and_clean(self) -> int:
        """Merge everything into ``output`` and delete the parts, under rank 0's lock; returns the number of rows."""
        locked_here = self._lock is None
        self.lock(0)
        try:
            count = self.merge()
            self.remove_parts()
        finally:
            if locked_here:
                self.unlock()
        return count

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._locked_by_setup = self._lock is None  # else the caller holds it (``locked``) and releases it
        self.lock(trainer.global_rank)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._locked_by_setup:
            self.unlock()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close_part()
        if self._locked_by_setup:
            self.unlock()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.close_part()
        trainer.strategy.barrier("l2s-merge-parts")
        if trainer.is_global_zero:
            self.merge_and_clean()
        trainer.strategy.barrier("l2s-merged-parts")
