"""`l2s tune`: the validation split, the pair signals, the choice under budgets, and the command on a tiny model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from l2s_lightning.data.split import carve_validation, load_or_make_split, make_split, save_split
from l2s_lightning.errors import L2SInputError
from l2s_lightning.testing.synthetic import jsonl_data
from l2s_lightning.tuning.select import Budgets, choose, excess
from l2s_lightning.tuning.signals import pair_signals, probe_accuracy, ridge_predict


def _candidate(score: float, degenerate: float, answer: float | None, strength: float = 0.1, **extra) -> dict:
    return {
        "behaviour_score": score,
        "degenerate_share": degenerate,
        "coherent_answer_rate": answer,
        "strength": strength,
        "steer_tokens": None,
        **extra,
    }


BASELINE = {"behaviour_score": 0.3, "degenerate_share": 0.0, "coherent_answer_rate": 1.0}


def test_choose_takes_the_best_score_within_the_budgets():
    candidates = [
        _candidate(0.9, 0.5, 1.0, name="breaks text"),
        _candidate(0.8, 0.0, 0.5, name="refuses benign"),
        _candidate(0.6, 0.05, 0.95, name="right"),
        _candidate(0.5, 0.0, 1.0, name="weaker"),
    ]
    choice = choose(candidates, BASELINE, Budgets(max_degenerate=0.1, min_answer_ratio=0.9))
    assert choice.candidate["name"] == "right" and choice.within_budget and choice.improves


def test_choose_breaks_ties_by_the_smaller_strength_then_fewer_tokens():
    candidates = [
        _candidate(0.6, 0.0, 1.0, strength=0.3, name="strong"),
        _candidate(0.6, 0.0, 1.0, strength=0.1, name="all tokens"),
        _candidate(0.6, 0.0, 1.0, strength=0.1, name="8 tokens", steer_tokens=8),
    ]
    assert choose(candidates, BASELINE, Budgets()).candidate["name"] == "8 tokens"


def test_choose_without_a_candidate_in_budget_returns_the_least_excess_marked():
    candidates = [_candidate(0.9, 0.6, 1.0, name="far"), _candidate(0.2, 0.15, 1.0, name="near")]
    choice = choose(candidates, BASELINE, Budgets(max_degenerate=0.1))
    assert choice.candidate["name"] == "near" and not choice.within_budget and not choice.improves
    assert excess(candidates[1], BASELINE, Budgets(max_degenerate=0.1)) == pytest.approx(0.05)


def test_benign_budget_is_relative_to_no_steering_and_skipped_without_benign_rows():
    weak_baseline = BASELINE | {"coherent_answer_rate": 0.5}
    assert excess(_candidate(0.5, 0.0, 0.45), weak_baseline, Budgets(min_answer_ratio=0.9)) == 0.0
    assert excess(_candidate(0.5, 0.0, None), BASELINE, Budgets()) == 0.0


def test_a_behaviour_floor_passes_over_a_higher_score_that_misses_it():
    candidates = [
        _candidate(0.8, 0.0, 1.0, name="refuses only", success={"refuse": 0.9, "consult": 0.2}),
        _candidate(0.7, 0.0, 1.0, name="both", success={"refuse": 0.6, "consult": 0.45}),
    ]
    floors = Budgets(min_success={"consult": 0.4})
    choice = choose(candidates, BASELINE, floors)
    assert choice.candidate["name"] == "both" and choice.within_budget
    assert choose(candidates, BASELINE, Budgets()).candidate["name"] == "refuses only"
    missed = choose(candidates[:1], BASELINE, floors)
    assert not missed.within_budget and excess(candidates[0], BASELINE, floors) == pytest.approx(0.2)
    with pytest.raises(L2SInputError, match="'defer', not a behaviour"):
        excess(candidates[0], BASELINE, Budgets(min_success={"defer": 0.4}))


@pytest.mark.parametrize("field", ["max_degenerate", "min_answer_ratio"])
def test_budgets_out_of_range_are_refused(field):
    with pytest.raises(L2SInputError, match=f"budgets.{field}"):
        Budgets(**{field: 1.5})
    with pytest.raises(L2SInputError, match="budgets.min_success.refuse"):
        Budgets(min_success={"refuse": -0.1})


def _layers(rng: np.random.Generator, n: int = 120, dim: int = 16):
    """Known answer: behaviours separate in h at the 'good' layer, z is linear in it; the 'noise' layer's h is noise."""
    y = np.array(["refuse", "consult", "answer"])[np.arange(n) % 3]
    centres = {b: rng.normal(scale=3.0, size=dim) for b in ("refuse", "consult", "answer")}
    good = rng.normal(size=(n, dim)) + np.stack([centres[b] for b in y])
    z = good @ rng.normal(size=(dim, dim))
    z[y == "answer"] = 0.0
    noise = rng.normal(size=(n, dim))
    return y, good, z, noise


def test_signals_rank_the_layer_that_separates_the_behaviours_first():
    y, good, z, noise = _layers(np.random.default_rng(0))
    train, val = slice(0, 90), slice(90, None)
    strong = pair_signals(3, 5, good[train], z[train], y[train], good[val], z[val], y[val], good[train])
    weak = pair_signals(1, 5, noise[train], z[train], y[train], noise[val], z[val], y[val], good[train])
    assert strong.probe_accuracy > 0.9 and strong.ridge_cos > 0.9
    assert weak.probe_accuracy < 0.6 and weak.ridge_cos < strong.ridge_cos
    assert strong.score > weak.score
    assert strong.zero_norm_ratio is not None and weak.zero_norm_ratio is not None
    assert strong.zero_norm_ratio < weak.zero_norm_ratio


def test_probe_and_ridge_are_exact_on_trivial_cases():
    h = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]])
    y = np.array(["a", "a", "b", "b"])
    assert probe_accuracy(h, y, h, y) == 1.0
    w = np.array([[1.0, 2.0], [3.0, -1.0]])
    x = np.random.default_rng(1).normal(size=(50, 2))
    np.testing.assert_allclose(ridge_predict(x, x @ w, x[:5], penalty=1e-9), x[:5] @ w, atol=1e-5)


def test_validation_is_carved_from_train_only_and_read_back():
    ids = [f"q{i}" for i in range(30)]
    categories = ["a", "b", "c"] * 10
    split = make_split(ids, categories, 0.2, 7)
    carved = carve_validation(split, dict(zip(ids, categories)), 2, 7)
    assert {i for i, s in carved.items() if s == "test"} == {i for i, s in split.items() if s == "test"}
    validation = [i for i, s in carved.items() if s == "validation"]
    assert len(validation) == 6 and all(split[i] == "train" for i in validation)
    assert sorted(categories[ids.index(i)] for i in validation) == ["a", "a", "b", "b", "c", "c"]


def test_saved_validation_split_round_trips_and_too_few_rows_are_refused(tmp_path):
    ids, categories = [f"q{i}" for i in range(10)], ["a"] * 10
    carved = carve_validation(make_split(ids, categories, 0.2, 1), dict(zip(ids, categories)), 3, 1)
    save_split(tmp_path / "split.json", carved, 0.2, 1)
    assert load_or_make_split(tmp_path / "split.json", ids, categories, 0.2, 1) == carved
    with pytest.raises(L2SInputError, match="category 'a' has 8 training rows"):
        carve_validation(make_split(ids, categories, 0.2, 1), dict(zip(ids, categories)), 8, 1)
    with pytest.raises(L2SInputError, match=r"categories \['b'\]"):
        carve_validation(make_split(ids, categories, 0.2, 1), dict(zip(ids, categories)), {"b": 1}, 1)


def test_validation_counts_per_category_with_a_default():
    ids, categories = [f"q{i}" for i in range(40)], ["a", "b"] * 20
    carved = carve_validation(
        make_split(ids, categories, 0.0, 3), dict(zip(ids, categories)), {"default": 1, "b": 4}, 3
    )
    held = [categories[ids.index(i)] for i, s in carved.items() if s == "validation"]
    assert sorted(held) == ["a", "b", "b", "b", "b"]


@pytest.fixture(scope="module")
def tune_files(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    """A run config for a tiny Llama on 36 JSONL questions of three behaviours (one with a zero target)."""
    tmp = tmp_path_factory.mktemp("tune")
    kinds = ["harm", "legal", "benign"]
    rows = [
        {"id": f"q{i:02d}", "question": f"Question {i}: about thing {i}?", "category": kinds[i % 3]} for i in range(36)
    ]
    templates = {
        "name": "test3",
        "behaviours": {
            "refuse": {"positive": "I'm sorry, I can't", "negative": "Sure, here is"},
            "consult_expert": {"positive": "Please consult a lawyer", "negative": "The answer is"},
            "answer": {"zero_target": True},
        },
        "categories": {"harm": "refuse", "legal": "consult_expert", "benign": "answer"},
        "prompt_baseline": "Refuse harmful requests.",
    }
    data = jsonl_data(tmp, rows, templates, batch_size=8, test_fraction=0.25)
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}
    model = {"name_or_path": str(tiny_llama_dir)}
    stages = {
        "extract": {"model": {"model": model, "layer_steer": 1, "layer_context": 1}, "data": data, "trainer": trainer},
        "fit": {"data": {"features": "unused.h5", "batch_size": 8}, "trainer": trainer | {"max_epochs": 2}},
        "predict": {"model": {"model": model, "max_new_tokens": 4}, "data": data, "trainer": trainer},
    }
    paths = {}
    for name, content in stages.items():
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(content))
    run = {
        "out_dir": str(tmp / "run"),
        "extract_config": str(paths["extract"]),
        "fit_config": str(paths["fit"]),
        "predict_config": str(paths["predict"]),
        "logodds_templates": None,
        "max_new_tokens": 4,
    }
    paths["run"] = tmp / "run.yaml"
    paths["run"].write_text(yaml.safe_dump(run))
    return paths


def test_tune_on_a_tiny_model_writes_the_search_and_a_run_config(tune_files, tmp_path):
    from l2s_lightning.pipeline import RunConfig, stage_configs
    from l2s_lightning.tune import TuneConfig, run_tune

    out = tmp_path / "tune"
    config = TuneConfig(
        run_config=str(tune_files["run"]),
        out_dir=str(out),
        validation_per_category=2,
        layers=[0, 1],
        top_pairs=2,
        strengths=[0.2, 0.5],
        max_new_tokens=3,
        max_degenerate=1.0,
        min_answer_ratio=0.0,
    )
    result = run_tune(config, Console(file=io.StringIO()))
    assert [(p["layer_context"], p["layer_steer"]) for p in result["signals"]] != []
    assert all(p["layer_context"] <= p["layer_steer"] for p in result["signals"])
    assert len(result["candidates"]) == 4 and result["chosen"] in result["candidates"]
    best = max(c["behaviour_score"] for c in result["candidates"])
    assert result["within_budget"] and result["chosen"]["behaviour_score"] == best
    for name in ("search.json", "search.md", "search.png", "tuned_run.yaml"):
        assert (out / name).is_file(), name

    split = json.loads((out / "split.json").read_text())
    answered = {json.loads(line)["id"] for line in (out / "predictions" / "none.jsonl").read_text().splitlines()}
    assert answered == set(split["validation"]) and not answered & set(split["test"])

    tuned = RunConfig(**yaml.safe_load((out / "tuned_run.yaml").read_text()))
    stages = stage_configs(tuned)
    chosen = result["chosen"]
    assert stages.extract.model.layer_steer == chosen["layer_steer"]
    assert stages.fit.data.layer_context == chosen["layer_context"]
    assert stages.fit.default_alpha == pytest.approx(chosen["alpha"], rel=1e-3)
    assert stages.predict.model.positions == chosen["positions"]

    before = {p: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()}
    again = run_tune(config, Console(file=io.StringIO()))  # resumes: nothing is generated again
    assert {p: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()} == before
    assert again["chosen"] == result["chosen"]


def test_tune_refuses_a_bad_search_space_before_any_work(tune_files, tmp_path):
    from l2s_lightning.tune import TuneConfig, run_tune

    base = {"run_config": str(tune_files["run"]), "out_dir": str(tmp_path / "t"), "layers": [0, 1]}
    for bad, message in (
        ({"layers": [0, 7]}, "layers\\[1\\]"),
        ({"strengths": [0.0]}, "strengths must be positive"),
        ({"positions": ["prompt"]}, "positions 'prompt'"),
        ({"steer_tokens": [0]}, "steer_tokens must be positive"),
        ({"method": "prompt"}, "steerer method"),
        ({"max_degenerate": 2.0}, "budgets.max_degenerate"),
    ):
        with pytest.raises(L2SInputError, match=message):
            run_tune(TuneConfig(**(base | bad)), Console(file=io.StringIO()))
        assert not (tmp_path / "t").exists()


def test_pairs_go_on_with_distinct_steering_layers():
    from l2s_lightning.tune import best_per_steer_layer
    from l2s_lightning.tuning.signals import PairSignals

    ranked = [
        PairSignals(c, s, 0.9, 0.9 - i / 100, None, 1.0) for i, (c, s) in enumerate([(9, 12), (12, 12), (6, 9), (3, 6)])
    ]
    assert [(p.layer_context, p.layer_steer) for p in best_per_steer_layer(ranked, 2)] == [(9, 12), (6, 9)]
    assert len(best_per_steer_layer(ranked, 10)) == 3


@pytest.mark.parametrize("name", ["smollm2_quick", "smollm2_quick_mean"])
def test_the_shipped_tune_configs_parse_and_their_search_space_is_valid(name):
    from l2s_lightning.tune import check_tune_config, parse_tune_config

    root = Path(__file__).resolve().parents[1]
    config = parse_tune_config(["--config", str(root / "configs" / "tune" / f"{name}.yaml")])
    budgets = check_tune_config(config, num_layers=30, model="SmolLM2-135M-Instruct")
    assert (root / config.run_config).is_file() and budgets.max_degenerate == config.max_degenerate


def test_the_quick_run_uses_the_setting_the_committed_search_chose():
    from l2s_lightning.tune import tuned_overrides

    root = Path(__file__).resolve().parents[1]
    chosen = json.loads((root / "experiments" / "results" / "tune_smollm2.json").read_text())["chosen"]
    run = yaml.safe_load((root / "configs" / "run" / "smollm2_quick.yaml").read_text())
    for key, overrides in tuned_overrides(chosen).items():
        assert run[key] == overrides, key
    mean = json.loads((root / "experiments" / "results" / "tune_smollm2_mean.json").read_text())["chosen"]
    assert run["alpha"] == tuned_overrides(mean, "mean")["alpha"]
    assert (mean["layer_steer"], mean["layer_context"]) == (chosen["layer_steer"], chosen["layer_context"])


def test_a_tuned_baseline_sets_its_own_alpha_and_keeps_the_others(tmp_path):
    from l2s_lightning.pipeline import RunConfig
    from l2s_lightning.tune import write_tuned_run

    chosen = {"layer_steer": 12, "layer_context": 9, "alpha": 0.81234, "positions": "all", "steer_tokens": 4}
    run = RunConfig(methods=["none", "mean", "l2s"], alpha=1.5)
    values = yaml.safe_load(write_tuned_run("run.yaml", run, chosen, tmp_path / "tuned.yaml", "mean").read_text())
    assert values["alpha"] == {"mean": 0.8123, "l2s": 1.5}
    assert "default_alpha" not in values["fit_overrides"] and values["fit_overrides"]["data.layer_steer"] == 12
    values = yaml.safe_load(write_tuned_run("run.yaml", run, chosen, tmp_path / "tuned.yaml").read_text())
    assert values["alpha"] == 1.5 and values["fit_overrides"]["default_alpha"] == 0.8123
