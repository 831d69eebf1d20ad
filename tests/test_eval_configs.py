"""Judge settings: the shipped configs/evaluate/*.yaml, and judge configs passed through `l2s run` / `l2s sweep`."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from l2s_lightning.evaluation.config import EvalConfig, judge_spec, merge_judge, resolve_eval_config
from l2s_lightning.evaluation.judges.registry import JUDGES, judge_class
from l2s_lightning.evaluation.resources import resource_text

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = sorted((ROOT / "configs" / "evaluate").glob("*.yaml"))


@pytest.fixture()
def no_models_no_network(monkeypatch):
    """Fail the test if anything loads a model or opens a URL while configs are parsed."""
    import urllib.request

    import l2s_lightning.models.loading as loading

    def forbidden(*args, **kwargs):
        raise AssertionError("parsing a config must not load a model or call a server")

    monkeypatch.setattr(loading, "load_model", forbidden)
    monkeypatch.setattr(urllib.request, "urlopen", forbidden)


def test_shipped_evaluate_configs_exist():
    assert {p.stem for p in EVALUATE} >= {"keyword", "llama_guard3", "http"}


@pytest.mark.parametrize("path", EVALUATE, ids=lambda p: p.stem)
def test_evaluate_config_parses_into_a_judge_config(path, no_models_no_network):
    cfg = resolve_eval_config(path)  # also checks the kwargs against the judge's constructor
    assert cfg.judge["name"] in JUDGES
    params = inspect.signature(judge_class(cfg.judge["name"])).parameters
    assert set(cfg.judge["kwargs"]) <= set(params)
    for key, value in cfg.judge["kwargs"].items():  # every template / phrase list it names is shipped
        if (key.endswith("template") or key.endswith("phrases")) and value:
            assert resource_text(value)
    assert cfg.safety.thresholds == [0.5, 0.7, 0.9] and cfg.safety.unsafe_scenarios is None


def test_evaluate_config_contents(no_models_no_network):
    keyword = resolve_eval_config(ROOT / "configs/evaluate/keyword.yaml")
    from l2s_lightning.evaluation.judges import build_judge

    assert build_judge(keyword.judge).describe() == build_judge("keyword").describe()  # the defaults, spelled out
    guard = resolve_eval_config(ROOT / "configs/evaluate/llama_guard3.yaml").judge
    assert guard["name"] == "causal_lm" and guard["kwargs"]["model"] == "meta-llama/Llama-Guard-3-8B"
    assert guard["kwargs"]["template"] == "judge_unsafe_llama_guard3.txt"
    assert "four assessed examples" in resource_text(guard["kwargs"]["template"])
    http = resolve_eval_config(ROOT / "configs/evaluate/http.yaml").judge["kwargs"]
    assert http["api_key_env"] == "OPENAI_API_KEY" and not {"api_key", "key"} & set(http)


def test_judge_spec_and_merge():
    assert judge_spec("http") == {"name": "http", "kwargs": {}}
    base = {"name": "http", "kwargs": {"base_url": "u", "model": "a"}}
    assert merge_judge(base, {"name": "http", "kwargs": {"model": "b"}}) == {
        "name": "http",
        "kwargs": {"base_url": "u", "model": "b"},
    }
    assert merge_judge(base, {"name": "keyword", "kwargs": {}}) == {"name": "keyword", "kwargs": {}}
    with pytest.raises(ValueError, match=r"judge: needs a judge name or a mapping with 'name'.*\['model'\]"):
        judge_spec({"model": "m"})
    with pytest.raises(ValueError, match=r"judge.kwargs: must be a mapping"):
        judge_spec({"name": "http", "kwargs": ["model"]})


def test_bad_judge_settings_fail_clearly(tmp_path, no_models_no_network):
    with pytest.raises(ValueError, match=r"l2s run: judge: judge 'keyword' does not take kwargs \['p_unsure'\]"):
        resolve_eval_config(None, {"name": "keyword", "kwargs": {"p_unsure": 1.0}}, where="l2s run")
    with pytest.raises(ValueError, match=r"judge: judge 'http' does not take .*missing a required argument: 'model'"):
        resolve_eval_config(None, {"name": "http", "kwargs": {"base_url": "http://127.0.0.1:9/v1"}})
    with pytest.raises(ValueError, match="unknown judge 'guard'"):
        resolve_eval_config(None, "guard")
    bad = tmp_path / "eval.yaml"
    bad.write_text("judge: {name: keyword, kwarg: {}}\n")
    with pytest.raises(ValueError, match=r"eval.yaml: judge: needs a judge name or a mapping"):
        EvalConfig.from_yaml(bad)
    with pytest.raises(FileNotFoundError, match="l2s sweep: evaluation config not found"):
        resolve_eval_config(tmp_path / "missing.yaml", where="l2s sweep")


def test_run_config_accepts_a_judge_mapping(tmp_path, no_models_no_network):
    from l2s_lightning.pipeline import RunConfig, parse_run_config

    config = tmp_path / "run.yaml"
    judge = {
        "name": "http",
        "kwargs": {"base_url": "http://127.0.0.1:8000/v1", "model": "guard", "messages": "conversation"},
    }
    config.write_text(
        yaml.safe_dump(
            {"out_dir": str(tmp_path / "out"), "evaluate_config": "configs/evaluate/http.yaml", "judge": judge}
        )
    )
    parsed = parse_run_config(["--config", str(config)])
    assert isinstance(parsed, RunConfig) and parsed.judge == judge
    resolved = resolve_eval_config(ROOT / parsed.evaluate_config, parsed.judge)
    assert resolved.judge["kwargs"]["model"] == "guard" and resolved.judge["kwargs"]["api_key_env"] == "OPENAI_API_KEY"
    assert parse_run_config(["--config", str(config), "--judge", "keyword"]).judge == "keyword"
    flag = parse_run_config(["--judge", "{name: causal_lm, kwargs: {model: meta-llama/Llama-Guard-3-8B}}"])
    assert flag.judge == {"name": "causal_lm", "kwargs": {"model": "meta-llama/Llama-Guard-3-8B"}}


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "run").glob("*.yaml")), ids=lambda p: p.stem)
def test_run_configs_parse_and_resolve_their_judge(path, monkeypatch, no_models_no_network):
    from l2s_lightning.pipeline import parse_run_config

    monkeypatch.chdir(ROOT)
    parsed = parse_run_config(["--config", str(path)])
    assert resolve_eval_config(parsed.evaluate_config, parsed.judge).judge["name"] == "keyword"


def test_run_fails_on_a_bad_judge_before_any_work(tmp_path):
    from l2s_lightning.pipeline import RunConfig, run_pipeline

    config = RunConfig(out_dir=str(tmp_path / "out"), judge={"name": "causal_lm", "kwargs": {"modle": "x"}})
    with pytest.raises(ValueError, match=r"l2s run: judge: judge 'causal_lm' does not take kwargs \['modle'\]"):
        run_pipeline(config)
    assert not (tmp_path / "out").exists()


def test_run_on_a_jsonl_dataset_checks_its_logodds_templates_first_and_reports_its_benchmark(tmp_path):
    """`l2s run` on one's own JSONL data: log-odds templates without its categories stop it before any work
    (the default covers MM-SafetyBench only), and the report is built from the benchmark present."""
    import json

    from l2s_lightning.pipeline import RunConfig, build_report, run_pipeline

    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "question": "q?", "category": "trivia"}) + "\n" for i in range(3))
    )
    predict = tmp_path / "predict.yaml"
    predict.write_text(
        json.dumps(
            {
                "model": {"model": {"name_or_path": "x"}},
                "data": {
                    "source": {
                        "class_path": "l2s_lightning.data.sources.JsonlSource",
                        "init_args": {"path": str(tmp_path / "data.jsonl")},
                    }
                },
            }
        )
    )
    config = RunConfig(out_dir=str(tmp_path / "out"), predict_config=str(predict), methods=["none"])
    with pytest.raises(ValueError, match=r"l2s run: logodds_templates: category 'trivia' .*logodds_templates: null"):
        run_pipeline(config)
    assert not (tmp_path / "out").exists()
    summary = {"unsafe@0.5": 0.25, "refusal_rate": 0.5, "n": 3}
    metrics = {"benchmarks": {"jsonl": {"runs": [{"method": "none", "alpha": None, "summary": summary}]}}}
    report = build_report(config, metrics, {}, {})
    assert report["rows"] == [
        {
            "method": "none",
            "alpha": None,
            "unsafe@0.5": 0.25,
            "unsafe@0.7": None,
            "unsafe@0.9": None,
            "ed_score": None,
            "behaviour_score": None,
            "quality": None,
            "coherent_quality": None,
            "refusal_rate": 0.5,
            "deferral_rate": None,
            "compliance_rate": None,
            "degenerate_share": None,
            "answer_perplexity": None,
            "n": 3,
        }
    ]
    summary["over_refusal_rate"] = 0.0  # data with benign / answer rows: their columns appear
    assert build_report(config, metrics, {}, {})["rows"][0]["over_refusal_rate"] == 0.0


def test_run_and_sweep_check_the_evaluations_categories_against_the_data_first(tmp_path, monkeypatch):
    """A custom category in unsafe_scenarios / ed_scenarios that the data lacks (a typo) stops `l2s run` and
    `l2s sweep` before any work; the data's own categories and MM-SafetyBench ids pass the check."""
    import dataclasses
    import json

    from l2s_lightning.pipeline import RunConfig, check_safety_categories, predict_rows, run_pipeline
    from l2s_lightning.steerer import Steerer
    from l2s_lightning.sweep import SweepConfig, run_sweep

    (tmp_path / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"t{i}", "question": "q?", "category": c}) + "\n"
            for i, c in enumerate(["tax", "weapons", ""])
        )
    )
    predict = tmp_path / "predict.yaml"
    predict.write_text(
        json.dumps(
            {
                "model": {"model": {"name_or_path": "x"}},
                "data": {
                    "source": {
                        "class_path": "l2s_lightning.data.sources.JsonlSource",
                        "init_args": {"path": str(tmp_path / "data.jsonl")},
                    }
                },
            }
        )
    )
    typo = tmp_path / "eval.yaml"
    typo.write_text("safety: {unsafe_scenarios: [weapons, all], ed_scenarios: [taxes]}\n")
    config = RunConfig(
        out_dir=str(tmp_path / "out"),
        predict_config=str(predict),
        methods=["none"],
        evaluate_config=str(typo),
        logodds_templates=None,
    )
    with pytest.raises(
        ValueError,
        match=r"l2s run: safety.ed_scenarios .*'taxes' names no category .*categories present: \['all', 'tax', 'weapons'\]",
    ):
        run_pipeline(config)
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(Steerer, "load", staticmethod(lambda path: pytest.fail("the sweep went on")))
    with pytest.raises(ValueError, match=r"l2s sweep: safety.ed_scenarios .*'taxes'"):
        run_sweep(SweepConfig(steerer="s", predict_config=str(predict), evaluate_config=str(typo)))
    fine = resolve_eval_config({"safety": {"unsafe_scenarios": ["weapons", "all"], "ed_scenarios": ["tax"]}})
    check_safety_categories(fine, predict_rows(predict), "l2s run")
    release = resolve_eval_config({"safety": {"unsafe_scenarios": ["01", "02"]}})  # MM-SafetyBench names, own data
    with pytest.raises(ValueError, match=r"l2s run: safety.unsafe_scenarios .*'01' names no category"):
        check_safety_categories(release, predict_rows(predict), "l2s run")
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "o", "question": "q?", "category": "other"}) + "\n")
    assert len(predict_rows(predict, {"data.source.init_args.path": str(tmp_path / "other.jsonl")})) == 1  # overridden
    assert len(predict_rows(predict, ["--data.batch_size=8", "--data.num_workers=2"])) == 3  # not by these
    with pytest.raises(ValueError, match=r"l2s run: safety.ed_scenarios .*'taxes'"):
        run_pipeline(dataclasses.replace(config, extra_predict_args=["--data.batch_size=8"]))
    assert not resolve_eval_config(None).safety.names_categories  # the defaults: no data read for this check


def test_the_up_front_check_groups_mm_safetybench_rows_as_the_evaluation_does(tmp_path):
    """MM-SafetyBench rows from a JSONL file (categories "Legal_Opinion", "01"): '10' names a scenario present."""
    import json

    from l2s_lightning.pipeline import check_safety_categories, predict_rows

    (tmp_path / "mm.jsonl").write_text(
        "".join(
            json.dumps({"id": f"t{i}", "question": "q?", "category": c}) + "\n"
            for i, c in enumerate(["Legal_Opinion", "01"])
        )
    )
    predict = tmp_path / "predict.yaml"
    predict.write_text(
        json.dumps(
            {
                "model": {"model": {"name_or_path": "x"}},
                "data": {
                    "source": {
                        "class_path": "l2s_lightning.data.sources.JsonlSource",
                        "init_args": {"path": str(tmp_path / "mm.jsonl"), "benchmark": "mm_safetybench"},
                    }
                },
            }
        )
    )
    check_safety_categories(
        resolve_eval_config({"safety": {"ed_scenarios": ["10"], "unsafe_scenarios": ["1", "13"]}}),
        predict_rows(predict),
        "l2s run",
    )
