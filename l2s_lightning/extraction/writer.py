"""`HDF5FeatureWriter`: one HDF5 part file per batch and rank while running, merged into one `features.h5`
at the end.

Each batch is written to a complete file under a temporary name, closed and renamed into place: HDF5 files
are not crash-safe while open, so a kill (even ``kill -9``) at any moment leaves only whole, readable part
files (at most the batch in flight is lost; with the background writer used on CUDA, also the batches still
queued: ``max_pending``, 2 by default, each written within milliseconds of its copy to the host). Resuming:
ids already in `features.h5` or in any part file left by a killed run are skipped by the data module; the
merge keeps each id once. Attributes record the model, layers, hidden size, dataset, template set (name and
content hash) and split, and a rerun against a file of another model, dataset, layers or templates stops
before the model runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import lightning as L
import numpy as np
import torch

from l2s_lightning.errors import L2SInputError
from l2s_lightning.features import ARRAY_COLUMNS, IDENTITY_ATTRS, STRING_COLUMNS, append_rows
from l2s_lightning.files import write_atomically
from l2s_lightning.models.names import same_setting
from l2s_lightning.part_writer import RankPartWriter, hdf5_bytes


def read_rows(path: str | Path) -> dict[str, Any]:
    """All rows of a feature or part file (empty columns when the file has none)."""
    with h5py.File(path, "r") as file:
        if "sample_id" not in file:
            return {name: [] for name in STRING_COLUMNS} | {
                name: np.zeros((0, 0), np.float32) for name in ARRAY_COLUMNS
            }
        n = min(file[name].shape[0] for name in (*STRING_COLUMNS, *ARRAY_COLUMNS))
        rows: dict[str, Any] = {
            name: [v.decode() if isinstance(v, bytes) else str(v) for v in file[name][:n]] for name in STRING_COLUMNS
        }
        rows |= {name: file[name][:n] for name in ARRAY_COLUMNS}
        return rows


def read_attrs(path: str | Path) -> dict[str, Any]:
    with h5py.File(path, "r") as file:
        return {key: (value.item() if hasattr(value, "item") else value) for key, value in file.attrs.items()}


_HINTS = {
    "template_sha256": " (the template set's content changed)",
    "data_options": " (other dataset reader settings)",
    "data_sha256": " (another data file, or its rows changed)",
}


class HDF5FeatureWriter(RankPartWriter):
    """Writes the (h, z) rows of every predict batch to a new ``<output>.parts/rank<R>-<k>.h5`` (written as
    ``.tmp``, then renamed); rank 0 merges them into ``output`` when prediction ends (atomically: a temporary
    file renamed over the old one)."""

    part_suffix = ".h5"

    def __init__(
        self, output: str = "outputs/features.h5", async_write: bool | None = None, max_pending: int = 2
    ) -> None:
        """``async_write``: write parts on a background thread (None: when the features arrive with a CUDA
        event, i.e. their copy to the host is still running; the thread waits for it, so the accelerator runs
        the next batch meanwhile). ``max_pending``: batches queued at most before a new one waits."""
        super().__init__(output)
        if max_pending < 1:
            raise L2SInputError(f"max_pending={max_pending} must be at least 1")
        self.attrs: dict[str, Any] = {}
        self.async_write = async_write
        self.max_pending = max_pending
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def check_compatible(self, attrs: Mapping[str, Any]) -> None:
        """Stop before any work if existing output was made by another model, other layers or templates."""
        for path in self.existing_files():
            try:
                found = read_attrs(path)
            except OSError as err:
                raise L2SInputError(
                    f"{path} exists but cannot be read as HDF5 ({err}); move it away to start over"
                ) from err
            for key in IDENTITY_ATTRS:
                if key in found and key in attrs and not same_setting(key, str(found[key]), str(attrs[key])):
                    raise L2SInputError(
                        f"{path} holds features with {key}={found[key]!r}, this run has {key}={attrs[key]!r}"
                        f"{_HINTS.get(key, '')}: choose another output path (nothing was overwritten)"
                    )

    def done_ids(self) -> set[str]:
        """Sample ids already written by earlier runs (final file and leftover parts)."""
        done: set[str] = set()
        for path in self.existing_files():
            done.update(read_rows(path)["sample_id"])
        return done

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Mapping[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        rows = dict(prediction)
        ready = rows.pop("ready", None)
        path = self.next_part_path(trainer)  # named here, in batch order, whichever thread writes it
        threaded = ready is not None if self.async_write is None else self.async_write
        if not threaded:
            self._write_part(path, rows, ready)
            return
        self._raise_failed_writes()
        while len(self._pending) >= self.max_pending:  # bound the host memory held by queued batches
            self._pending.pop(0).result()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2s-hdf5-writer")
        self._pending.append(self._executor.submit(self._write_part, path, rows, ready))

    def _write_part(self, path: Path, rows: dict[str, Any], ready: Any = None) -> None:
        """Check one batch's rows and write them as a complete part file (waiting for their copy first)."""
        if ready is not None:
            ready.synchronize()
        for name in ARRAY_COLUMNS:
            value = rows[name]
            rows[name] = value.float().numpy() if isinstance(value, torch.Tensor) else value
        bad = ~np.isfinite(rows["context"]).all(1) | ~np.isfinite(rows["steer"]).all(1)
        if bad.any():
            ids = [i for i, b in zip(rows["sample_id"], bad) if b]
            raise FloatingPointError(
                f"non-finite features for samples {ids[:5]}: check dtype/model (nothing else lost)"
            )

        def fill(part: h5py.File) -> None:
            part.attrs.update(self.attrs)
            append_rows(part, rows)

        write_atomically(path, hdf5_bytes(fill))

    def _raise_failed_writes(self) -> None:
        """Re-raise, in the caller's thread, the error of the first finished background write that failed."""
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()

    def wait_for_writes(self) -> None:
        """Block until every queued batch is on disk; raises the first write error (after the others finished)."""
        pending, self._pending = self._pending, []
        errors = []
        for future in pending:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - every batch gets its chance to be written first
                errors.append(err)
        if errors:
            raise errors[0]

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.wait_for_writes()
        super().on_predict_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:  # batches already computed are still written, so that a rerun resumes after them
            self.wait_for_writes()
        except Exception as err:  # noqa: BLE001 - the run's own exception is the one to report
            warnings.warn(f"a queued feature batch could not be written: {err}", RuntimeWarning, stacklevel=2)
        super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        super().teardown(trainer, pl_module, stage)

    def merge(self) -> int:
        return merge_features(self.existing_files(), self.output, self.attrs)


def merge_features(files: Sequence[Path], output: Path, attrs: Mapping[str, Any]) -> int:
    """Merge feature/part files into ``output`` (each sample id once, rows sorted by id); returns N."""
    seen: set[str] = set()
    merged: dict[str, list[Any]] = {name: [] for name in (*STRING_COLUMNS, *ARRAY_COLUMNS)}
    for path in files:
        rows = read_rows(path)
        keep = [i for i, sample_id in enumerate(rows["sample_id"]) if sample_id not in seen]
        seen.update(rows["sample_id"][i] for i in keep)
        for name in STRING_COLUMNS:
            merged[name] += [rows[name][i] for i in keep]
        for name in ARRAY_COLUMNS:
            if keep:
                merged[name].append(rows[name][keep])
    order = np.argsort(np.asarray(merged["sample_id"], dtype=object), kind="stable")
    final: dict[str, Any] = {name: [merged[name][i] for i in order] for name in STRING_COLUMNS}
    for name in ARRAY_COLUMNS:
        final[name] = np.concatenate(merged[name])[order] if merged[name] else np.zeros((0, 0), np.float32)
    output.parent.mkdir(parents=True, exist_ok=True)

    def fill(file: h5py.File) -> None:
        append_rows(file, final)
        file.attrs.update({key: value for key, value in attrs.items() if value is not None})
        file.attrs["splits"] = ",".join(sorted(set(final["split"])))
        file.attrs["num_rows"] = len(final["sample_id"])

    write_atomically(output, hdf5_bytes(fill))
    return len(final["sample_id"])
