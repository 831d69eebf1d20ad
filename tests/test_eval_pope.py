"""POPE parsing (official rule) and metrics against hand-computed values."""

from __future__ import annotations

import pytest

from l2s_lightning.evaluation.pope import first15_correct, parse_pope_answer, pope_metrics, pope_scores
from l2s_lightning.evaluation.records import Prediction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No.", "no"),
        ("Yes, there is", "yes"),
        ("There is no dog", "no"),
        ("not sure", "no"),
        ("No, there is not a dog in the image.", "no"),
        ("Yes. There is no cat though.", "yes"),  # only the first sentence counts
        ("There is a dog.\nNo other animals.", "yes"),
        ("Nothing there", "yes"),  # whole words only, as in the official script
        ("Not sure", "yes"),  # the official script ignores capitalised "Not"
        ("no\ndog", "no"),  # any whitespace separates words
    ],
)
def test_parse_official_rule(text, expected):
    assert parse_pope_answer(text) == expected


def test_parse_empty():
    assert parse_pope_answer("") == "yes"  # what the official script does
    assert parse_pope_answer("   ", empty_as="no") == "no"
    assert parse_pope_answer("", empty_as="wrong", label="yes") == "no"
    assert parse_pope_answer("", empty_as="wrong", label="no") == "yes"


def _rows(labels, responses, subsets):
    return [
        Prediction(id=str(i), benchmark="pope", method="m", alpha=0.0, response=r, label=l, subset=s)
        for i, (l, r, s) in enumerate(zip(labels, responses, subsets))
    ]


def test_metrics_hand_computed():
    labels = ["yes", "yes", "no", "no", "yes"]
    responses = ["Yes, there is a dog.", "No.", "There is no dog", "not sure", ""]
    rows = _rows(labels, responses, ["random", "random", "random", "popular", "popular"])
    summary, per, per_row = pope_metrics(rows)
    # parsed: yes, no, no, no, yes (empty → yes): TP 2, FN 1, TN 2, FP 0
    assert summary["accuracy"] == pytest.approx(0.8)
    assert summary["precision"] == pytest.approx(1.0)
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["f1"] == pytest.approx(0.8)
    assert summary["yes_ratio"] == pytest.approx(0.4)
    assert summary["f1_release"] == pytest.approx(2 * 0.8 / 1.8)
    assert summary["n_empty"] == 1 and summary["n"] == 5
    # first-15-characters rule: "Yes, there is a" has yes; "No." has no (label yes): wrong; "There is no dog" has no;
    # "not sure" has no; "" lacks yes → 3 / 5
    assert summary["accuracy_first15"] == pytest.approx(0.6)
    assert per["random"]["accuracy"] == pytest.approx(2 / 3) and per["random"]["n"] == 3
    assert per["popular"]["accuracy"] == pytest.approx(1.0) and per["popular"]["yes_ratio"] == 0.5
    assert [r["parsed"] for r in per_row] == ["yes", "no", "no", "no", "yes"]
    wrong, _, _ = pope_metrics(rows, empty_as="wrong")
    assert wrong["accuracy"] == pytest.approx(0.6)


def test_scores_edge_cases():
    assert pope_scores([], [])["accuracy"] is None
    all_no = pope_scores(["yes", "no"], ["no", "no"])
    assert all_no["precision"] == 0.0 and all_no["recall"] == 0.0 and all_no["f1"] == 0.0
    assert first15_correct("no", "I think that there is no dog") is False  # "no" after character 15
    assert first15_correct("yes", "YES") is True


def test_subset_falls_back_to_category():
    rows = [
        Prediction(
            id="1", benchmark="pope", method="m", alpha=None, response="Yes", label="yes", category="adversarial"
        )
    ]
    _, per, _ = pope_metrics(rows)
    assert list(per) == ["adversarial"]
