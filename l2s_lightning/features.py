"""The ``features.h5`` schema (see docs/DESIGN.md): reader, attribute checks and a general writer.

Datasets (N rows): ``context`` float32 (N, D) = h at L', ``steer`` float32 (N, D) = z at L*, and the utf-8
string columns ``sample_id``, ``category``, ``behaviour``, ``split``. File attributes are read into
:class:`FeatureMeta`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from l2s_lightning.errors import L2SInputError
from l2s_lightning.models.names import same_setting

FORMAT_VERSION = 1
STRING_COLUMNS = ("sample_id", "category", "behaviour", "split")
ARRAY_COLUMNS = ("context", "steer")
# Attributes that identify what the vectors are; they must agree before rows are appended to a file. An
# attribute absent from either side is not compared (files of older versions lack the last two).
IDENTITY_ATTRS = (
    "model",
    "layer_steer",
    "layer_context",
    "hidden_size",
    "template_set",
    "split_seed",
    "test_fraction",
    "dataset",
    "data_options",
    "template_sha256",
    "data_sha256",
    "z_readout",
)
_STR = h5py.string_dtype("utf-8")
_CHUNK_ROWS = 4096


def _plain(value: Any) -> Any:
    """HDF5 attribute value as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class FeatureMeta:
    """Attributes of a features.h5 file (unknown attributes are kept in ``extra``)."""

    model: str
    layer_steer: int
    layer_context: int
    hidden_size: int
    format_version: int = FORMAT_VERSION
    num_layers: int | None = None
    template_set: str | None = None
    dataset: str | None = None
    split_seed: int | None = None
    test_fraction: float | None = None
    splits: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], source: str = "features.h5") -> FeatureMeta:
        values = {key: _plain(value) for key, value in attrs.items()}
        missing = [key for key in ("model", "layer_steer", "layer_context", "hidden_size") if key not in values]
        if missing:
            raise L2SInputError(f"{source}: missing attribute(s) {missing}; not a features.h5 written by `l2s extract`")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "splits"}
        known = {key: values.pop(key) for key in list(values) if key in names}
        splits = values.pop("splits", "")
        splits = tuple(s for s in (splits.split(",") if isinstance(splits, str) else splits) if s)
        for key in ("layer_steer", "layer_context", "hidden_size", "format_version"):
            if key in known:  # format_version may be absent (an attribute absent is not compared)
                known[key] = int(known[key])
        known["model"] = str(known["model"])
        if int(known.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise L2SInputError(
                f"{source}: format_version {known['format_version']} is newer than this reader ({FORMAT_VERSION})"
            )
        return cls(**known, splits=splits, extra=values)

    def to_attrs(self) -> dict[str, Any]:
        attrs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "splits")}
        attrs["splits"] = ",".join(self.splits)
        attrs |= self.extra
        return {key: value for key, value in attrs.items() if value is not None}


def check_compatible(
    meta: FeatureMeta,
    *,
    model: str | None = None,
    layer_steer: int | None = None,
    layer_context: int | None = None,
    hidden_size: int | None = None,
    source: str = "features.h5",
) -> None:
    """Raise ``ValueError`` naming the field and both values when ``meta`` disagrees with what is expected
    (``None`` = not checked)."""
    expected = {"model": model, "layer_steer": layer_steer, "layer_context": layer_context, "hidden_size": hidden_size}
    problems = [
        f"{key}: the file has {getattr(meta, key)!r}, the config asks for {value!r}"
        for key, value in expected.items()
        if value is not None and not same_setting(key, str(getattr(meta, key)), str(value))
    ]
    if problems:
        raise L2SInputError(f"{source} does not match the config ({'; '.join(problems)}): re-extract or fix the config")


@dataclass
class FeatureArrays:
    """Rows of a feature file loaded in memory."""

    context: np.ndarray
    steer: np.ndarray
    sample_id: list[str]
    category: list[str]
    behaviour: list[str]
    split: list[str]

    def __len__(self) -> int:
        return len(self.sample_id)


class FeatureFile:
    """Read-only access to a features.h5 file. String columns are read at construction (small); the
    (N, D) arrays are read on demand, by rows or in chunks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"features file not found: {self.path} (run `l2s extract` first)")
        try:
            with h5py.File(self.path, "r") as file:
                self.meta = FeatureMeta.from_attrs(file.attrs, source=str(self.path))
                missing = [name for name in (*ARRAY_COLUMNS, *STRING_COLUMNS) if name not in file]
                if missing:
                    raise L2SInputError(f"{self.path}: missing dataset(s) {missing}")
                n = file["sample_id"].shape[0]
                for name in (*ARRAY_COLUMNS, *STRING_COLUMNS):
                    if file[name].shape[0] != n:
                        raise L2SInputError(
                            f"{self.path}: dataset {name!r} has {file[name].shape[0]} rows, sample_id has {n}"
                        )
                for name in ARRAY_COLUMNS:
                    if file[name].dtype.kind != "f":
                        raise L2SInputError(
                            f"{self.path}: dataset {name!r} holds {file[name].dtype}, not floating-point numbers"
                        )
                    width = file[name].shape[1] if file[name].ndim == 2 else None
                    if width != self.meta.hidden_size:
                        raise L2SInputError(
                            f"{self.path}: dataset {name!r} has shape {file[name].shape}, "
                            f"attribute hidden_size is {self.meta.hidden_size}"
                        )
                columns = {name: np.array([_plain(v) for v in file[name][:]], dtype=object) for name in STRING_COLUMNS}
        except OSError as err:
            raise L2SInputError(f"{self.path} cannot be read as HDF5 ({err})") from err
        self.sample_id, self.category, self.behaviour, self.split = (columns[name] for name in STRING_COLUMNS)

    def __len__(self) -> int:
        return len(self.sample_id)

    def __repr__(self) -> str:
        return f"FeatureFile({str(self.path)!r}, rows={len(self)}, D={self.dim}, splits={sorted(set(self.split))})"

    @property
    def dim(self) -> int:
        return self.meta.hidden_size

    def rows(self, split: str | None = None) -> np.ndarray:
        """Sorted row indices of ``split`` (all rows when ``None``)."""
        if split is None:
            return np.arange(len(self))
        return np.flatnonzero(self.split == split)

    def _indices(self, rows: str | Sequence[int] | np.ndarray | None) -> np.ndarray:
        if rows is None or isinstance(rows, str):
            return self.rows(rows)
        return np.asarray(rows, dtype=np.int64)

    def nbytes(self, rows: str | Sequence[int] | np.ndarray | None = None) -> int:
        """Bytes that ``context`` + ``steer`` of these rows take in memory."""
        return int(len(self._indices(rows)) * self.dim * 4 * 2)

    def read(
        self, rows: str | Sequence[int] | np.ndarray | None = None, columns: Sequence[str] = ARRAY_COLUMNS
    ) -> dict[str, np.ndarray]:
        """The array columns of ``rows`` (a split name, indices in any order, or ``None`` = all)."""
        idx = self._indices(rows)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        unique, inverse = np.unique(sorted_idx, return_inverse=True)
        out = {}
        with h5py.File(self.path, "r") as file:
            for name in columns:
                values = file[name][unique] if len(unique) else np.zeros((0, self.dim), np.float32)
                result = np.empty((len(idx), self.dim), np.float32)
                result[order] = values[inverse]
                out[name] = result
        return out

    def load(self, rows: str | Sequence[int] | np.ndarray | None = None) -> FeatureArrays:
        """Arrays and string columns of ``rows`` in memory."""
        idx = self._indices(rows)
        arrays = self.read(idx)
        return FeatureArrays(
            arrays["context"], arrays["steer"], *(getattr(self, name)[idx].tolist() for name in STRING_COLUMNS)
        )

    def iter_chunks(
        self, rows: str | Sequence[int] | np.ndarray | None = None, chunk: int = _CHUNK_ROWS
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(indices, arrays)`` for successive chunks of ``rows`` (in the given order)."""
        idx = self._indices(rows)
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            yield part, self.read(part)

    def check_rows(self, rows: str | Sequence[int] | np.ndarray | None = None) -> None:
        """Raise an L2SInputError naming the rows that cannot be trained on: an empty sample id, NaN or Inf in
        ``context`` or ``steer``, or both all zeros (never written by an extraction)."""
        indices = self._indices(rows)
        empty = [int(i) for i in indices if not str(self.sample_id[i])]
        if empty:
            raise L2SInputError(f"{self.path}: {len(empty)} row(s) with an empty sample_id, e.g. rows {empty[:5]}")
        bad: dict[str, list[str]] = {"NaN/Inf features": [], "all-zero h and z": []}
        for part, arrays in self.iter_chunks(indices):
            context, steer = arrays["context"], arrays["steer"]
            bad["NaN/Inf features"] += self.sample_id[
                part[~np.isfinite(context).all(1) | ~np.isfinite(steer).all(1)]
            ].tolist()
            bad["all-zero h and z"] += self.sample_id[part[~context.any(1) & ~steer.any(1)]].tolist()
        for what, ids in bad.items():
            if ids:
                shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
                raise L2SInputError(f"{self.path}: {len(ids)} row(s) with {what}: {shown} (re-extract them)")

    def fingerprint(self, rows: str | Sequence[int] | np.ndarray | None = None) -> str:
        """sha256 over the rows used (in order): sample id, h and z bytes (float32, little endian)."""
        digest = hashlib.sha256()
        for part, arrays in self.iter_chunks(rows):
            context = arrays["context"].astype("<f4", copy=False)
            steer = arrays["steer"].astype("<f4", copy=False)
            for j, i in enumerate(part):
                digest.update(str(self.sample_id[i]).encode() + b"\0")
                digest.update(context[j].tobytes())
                digest.update(steer[j].tobytes())
        return digest.hexdigest()


def append_rows(file: h5py.File, rows: Mapping[str, Any]) -> int:
    """Append rows (``context``/``steer`` (n, D) arrays, string columns as sequences) to resizable datasets."""
    n = len(rows["sample_id"])
    if n == 0:
        return 0
    for name in (*ARRAY_COLUMNS, *STRING_COLUMNS):
        if len(rows[name]) != n:
            raise L2SInputError(f"column {name!r} has {len(rows[name])} rows, sample_id has {n}")
    for name in ARRAY_COLUMNS:
        values = np.asarray(rows[name], dtype=np.float32)
        if values.ndim != 2:
            raise L2SInputError(f"{name} must be (N, D), got shape {values.shape}")
        if name not in file:
            file.create_dataset(
                name,
                shape=(0, values.shape[1]),
                maxshape=(None, values.shape[1]),
                dtype="f4",
                chunks=(max(1, min(256, n)), values.shape[1]),
            )
        dataset = file[name]
        if dataset.shape[1] != values.shape[1]:
            raise L2SInputError(f"{name} has width {values.shape[1]}, the file has {dataset.shape[1]}")
        dataset.resize(dataset.shape[0] + n, axis=0)
        dataset[-n:] = values
    for name in STRING_COLUMNS:
        if name not in file:
            file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,))
        dataset = file[name]
        dataset.resize(dataset.shape[0] + n, axis=0)
        dataset[-n:] = [str(v) for v in rows[name]]
    return n


def write_features(
    path: str | Path,
    context: Any,
    steer: Any,
    sample_id: Sequence[str],
    category: Sequence[str],
    behaviour: Sequence[str],
    split: Sequence[str],
    *,
    append: bool = False,
    **attrs: Any,
) -> Path:
    """Write (or, with ``append=True``, add to) a features.h5 file of the schema above.

    ``attrs`` become file attributes (``model``, ``layer_steer``, ``layer_context`` are needed;
    ``hidden_size`` and ``format_version`` are filled in). When appending, identity attributes given here
    must equal the file's, and sample ids already present are refused. ``splits`` and ``num_rows`` are
    kept up to date.
    """
    path = Path(path)
    context = np.asarray(context.detach().cpu() if hasattr(context, "detach") else context, dtype=np.float32)
    steer = np.asarray(steer.detach().cpu() if hasattr(steer, "detach") else steer, dtype=np.float32)
    if context.shape != steer.shape:
        raise L2SInputError(f"context {context.shape} and steer {steer.shape} must have the same shape")
    attrs = {"format_version": FORMAT_VERSION, "hidden_size": int(context.shape[1]), **attrs}
    rows = {
        "context": context,
        "steer": steer,
        "sample_id": sample_id,
        "category": category,
        "behaviour": behaviour,
        "split": split,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "a" if append and path.exists() else "w"
    with h5py.File(path, mode) as file:
        if mode == "a" and "sample_id" in file:
            for key in IDENTITY_ATTRS:
                if key in file.attrs and key in attrs and str(_plain(file.attrs[key])) != str(attrs[key]):
                    raise L2SInputError(
                        f"{path}: cannot append, {key} is {_plain(file.attrs[key])!r} in the file "
                        f"and {attrs[key]!r} here"
                    )
            present = {_plain(v) for v in file["sample_id"][:]}
            dup = [str(s) for s in sample_id if str(s) in present]
            if dup:
                raise L2SInputError(f"{path}: sample ids already present: {dup[:5]}")
        if len(set(map(str, sample_id))) != len(sample_id):
            raise L2SInputError("sample ids must be unique")
        append_rows(file, rows)
        file.attrs.update({key: value for key, value in attrs.items() if value is not None})
        splits = sorted({_plain(v) for v in file["split"][:]}) if "split" in file else []
        file.attrs["splits"] = ",".join(splits)
        file.attrs["num_rows"] = int(file["sample_id"].shape[0]) if "sample_id" in file else 0
    return path
