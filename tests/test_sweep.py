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
