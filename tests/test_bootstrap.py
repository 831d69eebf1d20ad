"""Bootstrap intervals over questions (evaluation/bootstrap.py) and the paired method comparisons of `l2s run`'s
report (pipeline.build_report / report_markdown / print_report), on synthetic data."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from l2s_lightning.evaluation.bootstrap import bootstrap_ci, macro_mean, paired_difference_ci, stratified_macro_ci
from l2s_lightning.pipeline import RunConfig, build_report, paired_comparison, print_report, report_markdown


def _bernoulli(p: float, n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def test_interval_contains_the_mean_and_shrinks_with_n():
    widths = []
    for n in (20, 200, 2000):
        values = _bernoulli(0.6, n, seed=n)
        lo, hi = bootstrap_ci(values)
        assert lo <= values.mean() <= hi and 0.0 <= lo < hi <= 1.0
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert bootstrap_ci(_bernoulli(0.6, 50, 1)) == bootstrap_ci(_bernoulli(0.6, 50, 1))  # fixed seed


def test_known_cases():
    assert bootstrap_ci([1.0] * 7) == (1.0, 1.0)
    assert bootstrap_ci([0.0]) == (0.0, 0.0)
    assert stratified_macro_ci([1, 1, 0, 0], ["a", "a", "b", "b"]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="3 group labels for 2 values"):
        macro_mean([1, 0], ["a", "a", "b"])


def test_stratified_macro_mean_is_the_mean_of_group_means():
    values = [1, 1, 1, 0] + [0, 1] + [0, 0, 0, 0, 1, 0]  # a: 3/4, b: 1/2, c: 1/6
    groups = ["a"] * 4 + ["b"] * 2 + ["c"] * 6
    assert macro_mean(values, groups) == pytest.approx((3 / 4 + 1 / 2 + 1 / 6) / 3)
    assert macro_mean(values, groups) != pytest.approx(np.mean(values))  # not the pooled mean
    lo, hi = stratified_macro_ci(values, groups)
    assert lo <= macro_mean(values, groups) <= hi
    # a group whose rows all agree adds no spread: with one varying group the interval is a third of its own
    steady = [1.0] * 30 + list(_bernoulli(0.5, 30, 3))
    labels = ["x"] * 30 + ["y"] * 30
    lo_y, hi_y = bootstrap_ci(steady[30:])
    lo, hi = stratified_macro_ci(steady, labels)
    assert hi - lo == pytest.approx((hi_y - lo_y) / 2, rel=0.25)


def test_paired_difference():
    groups = ["refuse"] * 40 + ["answer"] * 40
    a = _bernoulli(0.5, 80, 7)
    assert paired_difference_ci(a, a, groups) == (0.0, 0.0)
    better = np.clip(a + _bernoulli(0.6, 80, 8), 0, 1)  # a's successes and then some
    lo, hi = paired_difference_ci(better, a, groups)
    assert 0.0 < lo <= macro_mean(better, groups) - macro_mean(a, groups) <= hi
    same = _bernoulli(0.5, 80, 9)  # another draw of the same distribution
    lo, hi = paired_difference_ci(same, a, groups)
    assert lo < 0.0 < hi
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference_ci(a, a[:-1], groups)


# --- l2s run's report ---------------------------------------------------------------------------------------------


def _scores(method: str, success: list[float | None], behaviours: list[str]) -> list[dict]:
    return [
        {"benchmark": "jsonl", "method": method, "alpha": 1.0, "model": "m", "layer_steer": 3}
        | {"id": f"q{i}", "behaviour": b, "success": None if s is None else bool(s)}
        for i, (s, b) in enumerate(zip(success, behaviours))
    ]


def test_report_compares_l2s_with_each_baseline_present():
    behaviours = ["refuse"] * 30 + ["answer"] * 30
    l2s = [1.0] * 25 + [0.0] * 5 + [1.0] * 27 + [0.0] * 3
    mean = [1.0] * 10 + [0.0] * 20 + [1.0] * 12 + [0.0] * 18
    runs, scores = [], []
    for method, success in (("l2s", l2s), ("mean", mean), ("none", l2s)):
        summary = {"behaviour_score": macro_mean(success, behaviours), "n": 60}
        runs.append({"method": method, "alpha": 1.0, "model": "m", "layer_steer": 3, "summary": summary})
        scores += _scores(method, success, behaviours)
    scores.append(_scores("mean", [None], ["custom"])[0] | {"id": "extra"})  # no rule, unmatched: left out
    scores.append(scores[0] | {"benchmark": "pope", "success": False})  # another benchmark's row: left out
    metrics = {"benchmarks": {"jsonl": {"runs": runs}}}
    config = RunConfig(methods=["none", "prompt", "mean", "l2s"])
    report = build_report(config, metrics, {}, {}, scores)
    assert [row["behaviour_score"] for row in report["rows"]] == [
        pytest.approx(52 / 60),
        None,
        pytest.approx(22 / 60),
        pytest.approx(52 / 60),
    ]
    first, second = report["comparisons"]  # prompt did not run
    assert (first["method"], first["against"], first["n"]) == ("l2s", "mean", 60)
    assert first["difference"] == pytest.approx((25 / 30 + 27 / 30) / 2 - (10 / 30 + 12 / 30) / 2)
    lo, hi = first["difference_ci"]
    assert 0.0 < lo < first["difference"] < hi
    assert first["per_behaviour"]["refuse"]["difference"] == pytest.approx(15 / 30)
    assert first["per_behaviour"]["answer"]["n"] == 30
    assert (second["against"], second["difference"], second["difference_ci"]) == ("none", 0.0, [0.0, 0.0])
    assert second["per_behaviour"]["refuse"]["difference_ci"] == [0.0, 0.0]
    markdown = report_markdown(report)
    assert "## Paired comparisons" in markdown and "| comparison | n | behaviour_score | answer | refuse |" in markdown
    assert f"| l2s − mean | 60 | {first['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}] |" in markdown
    assert "| l2s − none | 60 | +0.00 [+0.00, +0.00] |" in markdown
    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    assert "Paired comparisons" in out.getvalue() and "l2s − mean" in out.getvalue()


def test_report_without_l2s_or_scores_has_no_comparisons():
    runs = [{"method": m, "alpha": None, "summary": {}} for m in ("none", "l2s")]
    metrics = {"benchmarks": {"jsonl": {"runs": runs}}}
    report = build_report(RunConfig(methods=["none", "l2s"]), metrics, {}, {"evaluate_s": 1.0})
    assert report["comparisons"] == []
    assert "Paired comparisons" not in report_markdown(report)
    # rows without a common id: an entry that says so
    assert paired_comparison("l2s", "none", {"a": ("refuse", 1.0)}, {"b": ("refuse", 0.0)}) == {
        "method": "l2s",
        "against": "none",
        "n": 0,
        "difference": None,
        "difference_ci": None,
        "per_behaviour": {},
    }
