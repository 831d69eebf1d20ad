"""`FeatureDataModule`: (h, z) rows of features.h5 for the L2S regression.

Train/test come from the ``split`` column written at extraction; validation is carved from train with a
seed (stratified by behaviour, every behaviour keeps at least one training row). Rows are held in memory
when they fit under ``in_memory_max_bytes``, else streamed from HDF5 (the file is opened lazily in each
worker process). Shuffling is a function of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import h5py
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from l2s_lightning.errors import L2SInputError
from l2s_lightning.features import FeatureFile, check_compatible


@runtime_checkable
class TrainingStatistics(Protocol):
    """What ``L2SModule`` reads from its data module before the first fit: statistics of the training rows."""

    def input_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of h."""
        ...

    def target_moments(self, covariance: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean and, if asked, covariance of z."""
        ...


class H5Rows(Dataset):
    """Rows of a features.h5 file read on demand; ``__getitems__`` reads a whole batch in one HDF5 call."""

    def __init__(self, path: str, indices: np.ndarray) -> None:
        self.path = str(path)
        self.indices = np.asarray(indices, dtype=np.int64)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():  # one handle per worker process
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getitems__(self, positions: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        unique, inverse = np.unique(rows, return_inverse=True)
        file = self._open()
        context, steer = file["context"][unique][inverse], file["steer"][unique][inverse]
        return [(torch.from_numpy(h), torch.from_numpy(z)) for h, z in zip(context, steer)]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([position])[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``seed + epoch``; Lightning calls :meth:`set_epoch` before each epoch."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def carve_validation(behaviours: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, val) of a stratified random split; each behaviour keeps ≥ 1 training row."""
    labels = np.asarray(behaviours, dtype=object)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for behaviour in sorted(set(labels.tolist())):
        positions = rng.permutation(np.flatnonzero(labels == behaviour))
        n_val = min(int(round(fraction * len(positions))), len(positions) - 1)
        val.append(positions[:n_val])
        train.append(positions[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class FeatureDataModule(L.LightningDataModule):
    """Batches ``(h, z)`` of a features.h5 file; the :class:`TrainingStatistics` of its training rows.

    Args:
        features: path of features.h5.
        batch_size: training batch size (evaluation uses the same).
        val_fraction: share of the train split held out for validation (0 < f < 1).
        seed: seed of the validation carve and of the per-epoch shuffle.
        train_split / test_split: values of the ``split`` column.
        in_memory_max_bytes: above this the rows are streamed from HDF5 instead of loaded.
        num_workers: DataLoader workers.
        model_name / layer_steer / layer_context / hidden_size: expected values; a file made otherwise is
            refused (``None`` = not checked).
    """

    def __init__(
        self,
        features: str = "outputs/features.h5",
        batch_size: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_split: str = "train",
        test_split: str = "test",
        in_memory_max_bytes: int = 2 * 1024**3,
        num_workers: int = 0,
        model_name: str | None = None,
        layer_steer: int | None = None,
        layer_context: int | None = None,
        hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise L2SInputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.file = FeatureFile(features)
        check_compatible(
            self.file.meta,
            model=model_name,
            layer_steer=layer_steer,
            layer_context=layer_context,
            hidden_size=hidden_size,
            source=str(features),
        )
        self.train_indices = self.val_indices = self.test_indices = np.zeros(0, np.int64)
        self._datasets: dict[str, TensorDataset | H5Rows] = {}
        self._ready = False

    @property
    def hp(self) -> AttributeDict:
        """The saved hyperparameters (the constructor's arguments)."""
        return cast(AttributeDict, self.hparams)

    @property
    def dim(self) -> int:
        """Hidden size D (linked to the module's ``dim`` by ``l2s fit``)."""
        return self.file.dim

    @property
    def in_memory(self) -> bool:
        return self.file.nbytes() <= self.hp.in_memory_max_bytes

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        hp = self.hp
        train_rows = self.file.rows(hp.train_split)
        if len(train_rows) == 0:
            raise L2SInputError(
                f"{self.file.path}: no rows in split {hp.train_split!r} "
                f"(splits present: {sorted(set(self.file.split))})"
            )
        if len(train_rows) < 2:
            raise L2SInputError(
                f"{self.file.path}: split {hp.train_split!r} has {len(train_rows)} row; "
                "need at least 2 to hold out validation"
            )
        train_pos, val_pos = carve_validation(self.file.behaviour[train_rows], hp.val_fraction, hp.seed)
        if len(val_pos) == 0:
            raise L2SInputError(
                f"validation is empty: val_fraction={hp.val_fraction} of {len(train_rows)} training rows rounds to 0"
            )
        self.train_indices, self.val_indices = train_rows[train_pos], train_rows[val_pos]
        self.test_indices = self.file.rows(hp.test_split)
        used = np.sort(np.concatenate([train_rows, self.test_indices]))
        self.file.check_rows(used)
        for name, indices in (("train", self.train_indices), ("val", self.val_indices), ("test", self.test_indices)):
            self._datasets[name] = self._dataset(indices)
        self._ready = True

    def _dataset(self, indices: np.ndarray) -> TensorDataset | H5Rows:
        if self.in_memory:
            arrays = self.file.read(indices)
            return TensorDataset(torch.from_numpy(arrays["context"]), torch.from_numpy(arrays["steer"]))
        return H5Rows(str(self.file.path), indices)

    @torch.no_grad()
    def input_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of h over the training rows (streamed, float64)."""
        self.setup()
        total = torch.zeros(self.dim, dtype=torch.float64)
        squares = torch.zeros(self.dim, dtype=torch.float64)
        for _, arrays in self.file.iter_chunks(self.train_indices):
            h = torch.from_numpy(arrays["context"]).double()
            total += h.sum(0)
            squares += (h * h).sum(0)
        n = len(self.train_indices)
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0.0) * (n / max(n - 1, 1))
        return mean.float(), var.sqrt().float()

    @torch.no_grad()
    def target_moments(self, covariance: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean (D,) and, if asked, covariance (D, D) of z over the training rows (streamed, float64)."""
        self.setup()
        total = torch.zeros(self.dim, dtype=torch.float64)
        second = torch.zeros(self.dim, self.dim, dtype=torch.float64) if covariance else None
        for _, arrays in self.file.iter_chunks(self.train_indices):
            z = torch.from_numpy(arrays["steer"]).double()
            total += z.sum(0)
            if second is not None:
                second += z.T @ z
        n = len(self.train_indices)
        mean = total / n
        cov = None if second is None else second / n - torch.outer(mean, mean)
        return mean, cov

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        self.setup()
        dataset = self._datasets[name]
        sampler = EpochShuffleSampler(len(dataset), self.hp.seed) if shuffle else None
        workers = self.hp.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hp.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if len(self.test_indices) == 0:
            raise L2SInputError(f"{self.file.path}: no rows in split {self.hp.test_split!r}")
        return self._loader("test", shuffle=False)
