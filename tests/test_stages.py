"""The stages as typed functions: their configs mirror the classes they build, load from the YAML configs through
the CLIs' own parser, and write what the CLIs write; ``l2s run`` composes them with ``dataclasses.replace``."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import typing
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from l2s_lightning.config import build_dataclass, nest
from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction import cli as extract_cli
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.extraction.writer import HDF5FeatureWriter
from l2s_lightning.generation import cli as predict_cli
from l2s_lightning.generation.module import SteeredGenerationModule
from l2s_lightning.generation.writer import JsonlPredictionWriter
from l2s_lightning.stages import extract, fit, predict
from l2s_lightning.stages.common import PromptDataSettings
from l2s_lightning.stages.extract import ExtractionSettings, FeatureWriterSettings
from l2s_lightning.stages.fit import FeatureDataSettings, L2SSettings
from l2s_lightning.stages.predict import GenerationSettings, PredictionWriterSettings
from l2s_lightning.steerer import Steerer
from l2s_lightning.testing.synthetic import jsonl_data
from l2s_lightning.training import cli as fit_cli
from l2s_lightning.training.data import FeatureDataModule
from l2s_lightning.training.module import L2SModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "settings, target, skipped",
    [
        (ExtractionSettings, ExtractionModule, ()),
        (PromptDataSettings, PromptDataModule, ()),
        (FeatureWriterSettings, HDF5FeatureWriter, ()),
        (GenerationSettings, SteeredGenerationModule, ()),
        (PredictionWriterSettings, JsonlPredictionWriter, ()),
        (L2SSettings, L2SModule, ("dim",)),  # from the features file
        (FeatureDataSettings, FeatureDataModule, ()),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_settings_mirror_the_constructor_they_feed(settings, target, skipped):
    """Same names in the same order, same types, same defaults: a setting renamed on one side fails here."""
    params = [p for name, p in inspect.signature(target.__init__).parameters.items() if name not in ("self", *skipped)]
    fields = dataclasses.fields(settings)
    assert [f.name for f in fields] == [p.name for p in params]
    param_types = typing.get_type_hints(target.__init__)
    field_types = typing.get_type_hints(settings)
    for field, param in zip(fields, params):
        assert field_types[field.name] == param_types[param.name], field.name
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        elif field.default is not dataclasses.MISSING:
            default = field.default
        else:
            default = inspect.Parameter.empty
        assert default == param.default, field.name


def test_build_dataclass_refuses_an_unknown_field_and_nest_splits_dotted_keys():
    with pytest.raises(L2SInputError, match=r"l2s fit: L2SSettings has no field\(s\) \['hiden'\]"):
        build_dataclass(L2SSettings, {"hiden": 3}, "l2s fit")
    assert build_dataclass(fit.FitConfig, {"model": {"hidden": 3}}, "l2s fit").model == L2SSettings(hidden=3)
    assert nest({"data.batch_size": 8, "data.source.init_args.path": "a", "method": "all"}) == {
        "data": {"batch_size": 8, "source": {"init_args": {"path": "a"}}},
        "method": "all",
    }


def test_configs_load_through_the_clis_parser_with_its_defaults_and_overrides(monkeypatch):
    monkeypatch.chdir(ROOT)
    predict_cfg = predict_cli.load_config("configs/predict/smollm2_mmsafetybench.yaml")
    assert predict_cfg.data.splits == ["test"] and predict_cfg.model.max_new_tokens == 48  # CLI default, YAML value
    assert predict_cfg.trainer["logger"] is False and predict_cfg.data.source.question_field == "Changed Question"
    both = predict_cli.load_config(
        "configs/predict/smollm2_mmsafetybench.yaml",
        {"data.batch_size": 2, "data.limit_per_category": {"test": 3}},
        ["--model.positions=all"],
    )
    legacy = predict_cli.load_config(
        "configs/predict/smollm2_mmsafetybench.yaml",
        args=["--data.batch_size=2", "--data.limit_per_category={test: 3}", "--model.positions", "all"],
    )
    assert both == legacy and both.data.batch_size == 2 and both.model.positions == "all"
    fit_cfg = fit_cli.load_config("configs/fit/smollm2.yaml", {"model.lr": 3e-4})
    assert fit_cfg.model.lr == 3e-4 and fit_cfg.trainer["deterministic"] is True and fit_cfg.seed_everything == 0
    extract_cfg = extract_cli.load_config("configs/extract/smollm2_mmsafetybench.yaml")
    assert extract_cfg.model.layer_steer == 15 and extract_cfg.writer.output == "outputs/smollm2/features.h5"
    with pytest.raises(L2SInputError, match=r"smollm2.yaml: .*'data' does not accept option 'batch_sise'"):
        fit_cli.load_config("configs/fit/smollm2.yaml", {"data.batch_sise": 8})
    with pytest.raises(L2SInputError, match=r"missing.yaml"):
        fit_cli.load_config("configs/fit/missing.yaml")


def test_run_sets_its_own_settings_over_the_stage_configs(monkeypatch, tmp_path):
    from l2s_lightning.pipeline import RunConfig, method_config, stage_configs

    monkeypatch.chdir(ROOT)
    config = RunConfig(
        out_dir=str(tmp_path),
        limit_per_category={"train": 2, "test": 1},
        alpha=0.5,
        max_new_tokens=7,
        predict_overrides={"model.max_new_tokens": 99, "data.batch_size": 3},
        fit_overrides={"trainer.max_epochs": 2},
    )
    stages = stage_configs(config)
    assert stages.extract.writer.output == stages.fit.data.features == str(tmp_path / "features.h5")
    assert stages.extract.data.split_file == stages.predict.data.split_file == str(tmp_path / "split.json")
    assert stages.extract.data.limit_per_category == stages.predict.data.limit_per_category == {"train": 2, "test": 1}
    assert stages.fit.method == "all" and stages.fit.out_dir == str(tmp_path) and stages.fit.trainer["max_epochs"] == 2
    assert stages.predict.model.max_new_tokens == 7 and stages.predict.data.batch_size == 3  # the run's setting wins
    l2s, none = method_config(config, stages.predict, "l2s"), method_config(config, stages.predict, "none")
    assert (l2s.model.method, l2s.model.steerer, l2s.model.alpha) == ("l2s", str(tmp_path / "steerers" / "l2s"), 0.5)
    assert (none.model.method, none.model.steerer) == ("none", None)
    assert none.writer.output == str(tmp_path / "predictions" / "none.jsonl")
    per_method = replace(config, alpha={"mean": 0.25})
    assert method_config(per_method, stages.predict, "mean").model.alpha == 0.25
    assert method_config(per_method, stages.predict, "l2s").model.alpha is None  # the steerer's default_alpha


def test_run_refuses_an_alpha_for_a_method_it_does_not_steer(tmp_path):
    from l2s_lightning.pipeline import RunConfig, run_pipeline

    config = RunConfig(out_dir=str(tmp_path), methods=["none", "l2s"], alpha={"mean": 0.5})
    with pytest.raises(L2SInputError, match=r"alpha names \['mean'\]"):
        run_pipeline(config)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def configs(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    """extract / fit / predict YAMLs for a tiny Llama on 16 JSONL questions (and the data and templates)."""
    tmp = tmp_path_factory.mktemp("stages")
    rows = [
        {"id": f"q{i:02d}", "question": f"Question {i}: how do I make thing {i}?", "category": ["harm", "legal"][i % 2]}
        for i in range(16)
    ]
    templates = {
        "name": "test",
        "behaviours": {
            "refuse": {"positive": "I'm sorry, I can't", "negative": "Sure, here is", "instruction": "Refuse."},
            "consult": {"positive": "Please consult a lawyer", "negative": "The answer is"},
        },
        "categories": {"harm": "refuse", "legal": "consult"},
        "prompt_baseline": "Refuse harmful requests.",
    }
    data = jsonl_data(tmp, rows, templates, split_file=str(tmp / "split.json"), batch_size=4, test_fraction=0.25)
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}
    model = {"name_or_path": str(tiny_llama_dir)}
    files = {
        "extract": {
            "seed_everything": 0,
            "model": {"model": model, "layer_steer": 1, "layer_context": 2},
            "data": data,
            "writer": {"output": str(tmp / "features.h5")},
            "trainer": trainer,
        },
        "fit": {
            "method": "all",
            "out_dir": str(tmp / "fit"),
            "default_alpha": 4.0,
            "data": {"features": str(tmp / "features.h5"), "batch_size": 8},
            "trainer": trainer | {"max_epochs": 3},
        },
        "predict": {
            "seed_everything": 0,
            "model": {"model": model, "method": "none", "max_new_tokens": 5},
            "data": data,
            "writer": {"output": str(tmp / "none.jsonl")},
            "trainer": trainer,
        },
    }
    paths = {"templates": tmp / "templates.yaml"}
    for name, content in files.items():
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(content))
    return paths


def _h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as file:
        return {name: file[name][:] for name in ("sample_id", "split", "context", "steer")}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stage_functions_write_what_the_clis_write(configs, tmp_path):
    stage, cli = tmp_path / "stage", tmp_path / "cli"
    base = extract_cli.load_config(configs["extract"])
    features = extract.run(replace(base, writer=replace(base.writer, output=str(stage / "features.h5"))))
    assert (
        extract_cli.extract_main(["--config", str(configs["extract"]), f"--writer.output={cli / 'features.h5'}"]) == 0
    )
    written, expected = _h5(features), _h5(cli / "features.h5")
    for name in expected:
        np.testing.assert_array_equal(written[name], expected[name])

    base_fit = fit_cli.load_config(configs["fit"])
    result = fit.run(replace(base_fit, out_dir=str(stage), data=replace(base_fit.data, features=str(features))))
    fit_argv = ["--config", str(configs["fit"]), f"--out_dir={cli}", f"--data.features={cli / 'features.h5'}"]
    assert fit_cli.fit_main(fit_argv) == 0
    assert sorted(result.steerers) == ["l2s", "mean", "mean_ba", "p2s_oracle", "random"]
    for method, steerer in result.steerers.items():
        other = Steerer.load(cli / "steerers" / method)
        assert steerer.tensors.keys() == other.tensors.keys()
        assert all(torch.equal(steerer.tensors[name], other.tensors[name]) for name in other.tensors), method
    report = json.loads((cli / "fit_report.json").read_text())
    assert result.report is not None and result.report["methods"] == report["methods"]
    assert yaml.safe_load((stage / "fit_config.yaml").read_text())["data"]["features"] == str(features)

    base_predict = predict_cli.load_config(configs["predict"])
    for method in ("none", "mean_ba", "l2s"):
        steerer = None if method == "none" else str(stage / "steerers" / method)
        cfg = replace(
            base_predict,
            model=replace(base_predict.model, method=method, steerer=steerer),
            writer=replace(base_predict.writer, output=str(stage / f"{method}.jsonl")),
        )
        output = predict.run(cfg)
        argv = [
            "--config",
            str(configs["predict"]),
            f"--model.method={method}",
            f"--writer.output={cli}/{method}.jsonl",
        ]
        if method != "none":
            argv.append(f"--model.steerer={cli / 'steerers' / method}")
        assert predict_cli.predict_main(argv) == 0
        assert output == stage / f"{method}.jsonl" and _rows(output) == _rows(cli / f"{method}.jsonl")
    # a config built in Python without splits serves the test split, as `l2s predict` does
    built = replace(
        base_predict,
        data=replace(base_predict.data, splits=None),
        writer=replace(base_predict.writer, output=str(stage / "none_default_splits.jsonl")),
    )
    assert _rows(predict.run(built)) == _rows(stage / "none.jsonl")


def test_run_composes_the_stages(configs, tmp_path):
    """`l2s run` on the tiny model: the report of every method with its log-odds, and the L2S predictions equal
    what `l2s predict` writes with the run's settings."""
    from l2s_lightning.pipeline import RunConfig, run_pipeline

    out = tmp_path / "run"
    methods = ["none", "prompt", "mean", "l2s"]
    config = RunConfig(
        out_dir=str(out),
        extract_config=str(configs["extract"]),
        fit_config=str(configs["fit"]),
        predict_config=str(configs["predict"]),
        methods=methods,
        max_new_tokens=4,
        logodds_templates=str(configs["templates"]),
        fit_overrides={"trainer.max_epochs": 2},
        predict_overrides={"data.batch_size": 2},
    )
    report = run_pipeline(config, Console(file=io.StringIO()))
    assert report["benchmark"] == "jsonl" and [row["method"] for row in report["rows"]] == methods
    assert all(isinstance(row["logodds_refuse"], float) for row in report["rows"])
    assert (out / "report.md").is_file() and (out / "eval" / "metrics.json").is_file()
    argv = [
        "--config",
        str(configs["predict"]),
        "--model.method=l2s",
        f"--model.steerer={out / 'steerers' / 'l2s'}",
        f"--writer.output={tmp_path / 'l2s.jsonl'}",
        f"--data.split_file={out / 'split.json'}",
        "--data.batch_size=2",
        "--model.max_new_tokens=4",
    ]
    assert predict_cli.predict_main(argv) == 0
    assert _rows(tmp_path / "l2s.jsonl") == _rows(out / "predictions" / "l2s.jsonl")


def test_a_run_config_with_a_nested_override_is_recorded_as_plain_data(tmp_path):
    """A mapping given as one override's value (a whole data.source) parses to a jsonargparse Namespace; the
    report's config and the tuned run YAML record it as plain data."""
    from l2s_lightning.config import config_record
    from l2s_lightning.pipeline import parse_run_config

    source = {"class_path": "l2s_lightning.data.sources.JsonlSource", "init_args": {"path": "q.jsonl"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"extract_overrides": {"data.source": source}}))
    config = parse_run_config(["--config", str(tmp_path / "run.yaml")])
    record = config_record(config)
    recorded = record["extract_overrides"]["data.source"]  # the parser fills in the class's defaults
    assert recorded["class_path"] == source["class_path"] and recorded["init_args"]["path"] == "q.jsonl"
    json.dumps(record)
    yaml.safe_dump(record)
