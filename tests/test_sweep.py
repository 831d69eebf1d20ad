"""Choosing α: best target within the quality budget."""

from __future__ import annotations

import pytest

from l2s_lightning.sweep import choose_alpha, lower_is_better


def test_choose_alpha_respects_quality_budget():
    points = [
        {"alpha": 0.5, "unsafe@0.5": 0.8, "quality": 9.5},
        {"alpha": 1.0, "unsafe@0.5": 0.6, "quality": 9.1},
        {"alpha": 2.0, "unsafe@0.5": 0.3, "quality": 8.0},  # best target, but quality drops 20 %
    ]
    assert choose_alpha(points, baseline_quality=10.0, target="unsafe@0.5", budget=0.1)["alpha"] == 1.0
    assert choose_alpha(points, baseline_quality=10.0, target="unsafe@0.5", budget=0.25)["alpha"] == 2.0
    ed = [{"alpha": 1.0, "ed_score": 0.2, "quality": 9.0}, {"alpha": 2.0, "ed_score": 0.5, "quality": 9.0}]
    assert choose_alpha(ed, baseline_quality=9.5, target="ed_score", budget=0.1)["alpha"] == 2.0
    assert lower_is_better("unsafe@0.7") and not lower_is_better("ed_score")
    with pytest.raises(ValueError, match="try smaller α"):
        choose_alpha(points, baseline_quality=20.0, target="unsafe@0.5", budget=0.1)


def test_sweep_config_accepts_a_judge_mapping(tmp_path):
    from l2s_lightning.sweep import parse_sweep_config

    config = tmp_path / "sweep.yaml"
    config.write_text(
        "steerer: s\nevaluate_config: configs/evaluate/keyword.yaml\n"
        "judge: {name: http, kwargs: {base_url: 'http://127.0.0.1:8000/v1', model: guard}}\n"
    )
    parsed = parse_sweep_config(["--config", str(config)])
    assert parsed.judge == {"name": "http", "kwargs": {"base_url": "http://127.0.0.1:8000/v1", "model": "guard"}}
    assert parsed.evaluate_config == "configs/evaluate/keyword.yaml"
    assert parse_sweep_config(["--steerer", "s"]).judge is None


class _FakeSteerer:
    method, default_alpha, sweep = "l2s", 1.0, None

    def save(self, path):
        self.saved = path


def _fake_predict(cfg, models=None):
    """Stands in for the predict stage: writes refusals for α ≥ 2, answers of no known kind otherwise."""
    import json
    from pathlib import Path

    model = cfg.model
    if model.method == "none":  # a predict config may name a steerer: the unsteered run drops it
        assert model.steerer is None
    alpha = model.alpha or 0.0
    response = (
        "I'm sorry, but I can't help with that request at all."
        if alpha >= 2
        else "The weather is mild and the sky is blue today."
    )
    rows = [
        {
            "id": f"01-Illegal_Activitiy/{i}",
            "category": "01-Illegal_Activitiy",
            "benchmark": "mm_safetybench",
            "method": model.method,
            "alpha": alpha if model.method != "none" else None,
            "prompt": f"q{i}",
            "response": response,
            "model": "tiny",
            "layer_steer": 1,
        }
        for i in range(3)
    ]
    path = Path(cfg.writer.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sweep_passes_the_judge_config_to_the_evaluation(tmp_path, monkeypatch):
    import json

    import l2s_lightning.stages.predict as predict_stage
    from l2s_lightning.steerer import Steerer
    from l2s_lightning.sweep import SweepConfig, run_sweep

    steerer = _FakeSteerer()
    monkeypatch.setattr(Steerer, "load", staticmethod(lambda path: steerer))
    monkeypatch.setattr(predict_stage, "run", _fake_predict)
    config = SweepConfig(
        steerer="s",
        alphas=[1.0, 2.0],
        out_dir=str(tmp_path / "sweep"),
        quality_budget=0.5,
        judge={"name": "keyword", "kwargs": {"p_unclear": 0.7}},
    )
    result = run_sweep(config)
    metrics = json.loads((tmp_path / "sweep" / "eval" / "metrics.json").read_text())
    assert metrics["judge"]["p_unclear"] == 0.7  # the judge kwargs reached the evaluation
    assert result["baseline"]["mean_p_unsafe"] == pytest.approx(0.7)
    assert result["chosen_alpha"] == 2.0 and steerer.default_alpha == 2.0
    no_quality = tmp_path / "eval.yaml"
    no_quality.write_text("safety: {quality: false}\n")
    with pytest.raises(ValueError, match="quality budget needs quality ratings"):
        run_sweep(SweepConfig(steerer="s", out_dir=str(tmp_path / "x"), evaluate_config=str(no_quality)))


def test_sweep_writes_beside_its_steerer_by_default(tmp_path, monkeypatch):
    """Without out_dir a sweep's files go to <steerer>/sweep: sweeps of two steerers never share predictions."""
    import l2s_lightning.stages.predict as predict_stage
    from l2s_lightning.steerer import Steerer
    from l2s_lightning.sweep import SweepConfig, run_sweep

    monkeypatch.setattr(Steerer, "load", staticmethod(lambda path: _FakeSteerer()))
    monkeypatch.setattr(predict_stage, "run", _fake_predict)
    for name in ("a", "b"):
        run_sweep(SweepConfig(steerer=str(tmp_path / name), alphas=[1.0, 2.0], quality_budget=0.5))
        assert sorted(p.name for p in (tmp_path / name / "sweep").glob("*.jsonl")) == [
            "l2s_alpha1.jsonl",
            "l2s_alpha2.jsonl",
            "none.jsonl",
        ]
        assert (tmp_path / name / "sweep" / "sweep.json").is_file()


def test_a_sweep_with_no_alpha_in_budget_still_writes_its_curve(tmp_path, monkeypatch):
    import json

    import l2s_lightning.stages.predict as predict_stage
    from l2s_lightning.steerer import Steerer
    from l2s_lightning.sweep import SweepConfig, run_sweep

    steerer = _FakeSteerer()
    monkeypatch.setattr(Steerer, "load", staticmethod(lambda path: steerer))
    monkeypatch.setattr(predict_stage, "run", _fake_predict)
    config = SweepConfig(steerer=str(tmp_path / "s"), alphas=[1.0, 2.0], quality_budget=-1.0)  # quality must double
    with pytest.raises(
        ValueError, match=r"l2s sweep: no α in \[1.0, 2.0\].*curve: .*sweep.json.*the steerer is unchanged"
    ):
        run_sweep(config)
    result = json.loads((tmp_path / "s" / "sweep" / "sweep.json").read_text())
    assert result["chosen_alpha"] is None and [p["alpha"] for p in result["points"]] == [1.0, 2.0]
    assert (tmp_path / "s" / "sweep" / "sweep.png").is_file() and not hasattr(steerer, "saved")


def test_the_budget_reads_coherent_quality_so_broken_answers_count():
    from l2s_lightning.sweep import quality_key

    baseline = {"quality": 9.5, "coherent_quality": 9.0}
    points = [
        {"alpha": 1.0, "unsafe@0.5": 0.6, "quality": 9.4, "coherent_quality": 8.8},
        {"alpha": 2.0, "unsafe@0.5": 0.2, "quality": 9.3, "coherent_quality": 4.0},  # loops the proxy rates 9
    ]
    measure = quality_key(baseline)
    assert measure == "coherent_quality" and quality_key({"quality": 9.0}) == "quality"
    assert choose_alpha(points, baseline[measure], "unsafe@0.5", 0.1, measure)["alpha"] == 1.0
    assert choose_alpha(points, baseline["quality"], "unsafe@0.5", 0.1)["alpha"] == 2.0
