"""features.h5: writer/reader round trip, splits, fingerprints, NaN rows, attribute checks, appending."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from l2s_lightning.errors import L2SInputError
from l2s_lightning.features import FORMAT_VERSION, FeatureFile, FeatureMeta, check_compatible, write_features
from l2s_lightning.testing.synthetic import make_synthetic_features

ATTRS = {"model": "m", "layer_steer": 3, "layer_context": 5, "template_set": "t", "split_seed": 0, "test_fraction": 0.5}


def _write(path, n=6, dim=4, start=0, split=None, append=False, **attrs):
    rng = np.random.default_rng(start)
    ids = [f"id{start + i}" for i in range(n)]
    return write_features(
        path,
        rng.normal(size=(n, dim)),
        rng.normal(size=(n, dim)),
        ids,
        ["c"] * n,
        ["refuse" if i % 2 else "defer" for i in range(n)],
        split or ["train", "test"] * (n // 2),
        append=append,
        **(ATTRS | attrs),
    )


def test_round_trip_and_rows(tmp_path):
    path = _write(tmp_path / "f.h5")
    file = FeatureFile(path)
    assert file.meta == FeatureMeta(
        model="m",
        layer_steer=3,
        layer_context=5,
        hidden_size=4,
        template_set="t",
        split_seed=0,
        test_fraction=0.5,
        splits=("test", "train"),
        extra={"num_rows": 6},
    )
    assert len(file) == 6 and file.dim == 4
    assert file.rows("train").tolist() == [0, 2, 4] and file.rows("test").tolist() == [1, 3, 5]
    loaded = file.load("test")
    assert loaded.sample_id == ["id1", "id3", "id5"] and loaded.behaviour == ["refuse"] * 3
    with h5py.File(path) as raw:
        assert np.array_equal(loaded.context, raw["context"][[1, 3, 5]])
    # any order, repeats allowed
    assert np.array_equal(file.read([5, 1, 5])["steer"], file.read([5, 1, 5])["steer"])
    assert np.array_equal(file.read([5, 1])["steer"][0], file.read([5])["steer"][0])


def test_fingerprint_depends_on_rows_and_values(tmp_path):
    a = FeatureFile(_write(tmp_path / "a.h5"))
    b = FeatureFile(_write(tmp_path / "b.h5"))
    c = FeatureFile(_write(tmp_path / "c.h5", start=1))
    assert a.fingerprint("train") == b.fingerprint("train") == b.fingerprint([0, 2, 4])
    assert a.fingerprint("train") != a.fingerprint("test")
    assert a.fingerprint() != c.fingerprint()


def test_nan_rows_are_named(tmp_path):
    path = _write(tmp_path / "f.h5")
    with h5py.File(path, "a") as raw:
        raw["context"][2, 1] = np.nan
        raw["steer"][5, 0] = np.inf
    file = FeatureFile(path)
    with pytest.raises(ValueError, match=r"2 row\(s\).*id2, id5"):
        file.check_rows()
    file.check_rows([0, 1, 3])  # the clean rows pass


def test_rows_a_broken_writer_leaves_are_named(tmp_path):
    """Rows of an empty id, or with h and z both all zeros, are refused by name before any training."""
    path = _write(tmp_path / "f.h5")
    with h5py.File(path, "a") as raw:
        raw["context"][4] = 0
        raw["steer"][4] = 0
        raw["context"][1] = 0  # h alone zero: kept
    with pytest.raises(L2SInputError, match=r"1 row\(s\) with all-zero h and z: id4 \(re-extract them\)"):
        FeatureFile(path).check_rows()
    FeatureFile(path).check_rows([0, 1, 2, 3, 5])
    with h5py.File(path, "a") as raw:
        raw["sample_id"][3] = b""
    with pytest.raises(L2SInputError, match=r"1 row\(s\) with an empty sample_id, e\.g\. rows \[3\]"):
        FeatureFile(path).check_rows()


def test_context_that_is_not_numbers_is_named(tmp_path):
    path = _write(tmp_path / "f.h5")
    with h5py.File(path, "a") as raw:
        del raw["context"]
        raw["context"] = np.array([["0.1"] * 4] * 6, dtype="S8")
    with pytest.raises(L2SInputError, match=r"f\.h5: dataset 'context' holds \|S8, not floating-point numbers"):
        FeatureFile(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "other"), ("layer_steer", 4), ("layer_context", 6), ("hidden_size", 8)],
)
def test_check_compatible_names_field_and_values(tmp_path, field, value):
    meta = FeatureFile(_write(tmp_path / "f.h5")).meta
    check_compatible(meta, model="m", layer_steer=3, layer_context=5, hidden_size=4)
    with pytest.raises(ValueError, match=rf"{field}: the file has .*{getattr(meta, field)!r}.* asks for {value!r}"):
        check_compatible(meta, **{field: value})


def test_append_and_refusals(tmp_path):
    path = _write(tmp_path / "f.h5")
    _write(path, n=2, start=10, split=["train", "extra"], append=True)
    file = FeatureFile(path)
    assert len(file) == 8 and file.meta.splits == ("extra", "test", "train") and file.meta.extra["num_rows"] == 8
    with pytest.raises(ValueError, match="already present"):
        _write(path, n=2, start=10, append=True)
    with pytest.raises(ValueError, match="layer_steer is 3 in the file and 9 here"):
        _write(path, n=2, start=20, append=True, layer_steer=9)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="l2s extract"):
        FeatureFile(tmp_path / "missing.h5")
    path = _write(tmp_path / "f.h5")
    with h5py.File(path, "a") as raw:
        del raw.attrs["layer_steer"]
    with pytest.raises(ValueError, match="missing attribute"):
        FeatureFile(path)
    with pytest.raises(ValueError, match="same shape"):
        write_features(
            tmp_path / "g.h5",
            np.zeros((2, 3)),
            np.zeros((2, 4)),
            ["a", "b"],
            ["c"] * 2,
            ["b"] * 2,
            ["train"] * 2,
            **ATTRS,
        )


def test_synthetic_file(tmp_path):
    file = FeatureFile(make_synthetic_features(tmp_path / "s.h5", n=50, dim=8))
    assert file.dim == 8 and set(file.behaviour) == {"refuse", "defer"} and set(file.split) == {"train", "test"}
    file.check_rows()


def test_dataset_and_template_hash_are_identity(tmp_path):
    """Rows of another dataset or of edited templates are never appended; files written before these
    attributes existed stay readable and appendable."""
    old = _write(tmp_path / "old.h5")  # no dataset / data_options / template_sha256 attributes
    assert FeatureFile(old).meta.dataset is None
    _write(old, n=2, start=10, append=True, dataset="JsonlSource:a.jsonl", template_sha256="abc")
    assert len(FeatureFile(old)) == 8
    new = _write(
        tmp_path / "new.h5", dataset="JsonlSource:a.jsonl", data_options='{"use_images": false}', template_sha256="abc"
    )
    file = FeatureFile(new)
    assert file.meta.dataset == "JsonlSource:a.jsonl" and file.meta.extra["template_sha256"] == "abc"
    for key, value in (
        ("dataset", "JsonlSource:b.jsonl"),
        ("template_sha256", "def"),
        ("data_options", '{"use_images": true}'),
    ):
        with pytest.raises(ValueError, match=f"cannot append, {key} is"):
            _write(new, n=2, start=20, append=True, **{key: value})
    assert len(FeatureFile(new)) == 6


def test_a_file_without_format_version_reads_as_the_current_one(tmp_path):
    path = _write(tmp_path / "f.h5")
    with h5py.File(path, "a") as raw:
        del raw.attrs["format_version"]
    meta = FeatureFile(path).meta
    assert meta.format_version == FORMAT_VERSION and meta.layer_steer == 3
