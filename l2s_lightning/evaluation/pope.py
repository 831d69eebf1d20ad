"""POPE: answer parsing and yes/no metrics, per subset (random / popular / adversarial) and overall.

Parsing follows the official POPE evaluation: keep the text before the first ".", drop commas, split into
words; the answer is "no" when a word is exactly ``No``, ``no`` or ``not``, else "yes" (so "Not sure" is
"yes" there, "not sure" is "no"). We split on any whitespace (the official code on single spaces only).
An empty answer is "yes" in the official code; ``empty_as`` can make it "no", or "wrong" (always counted as
an error: the opposite of the label). Empty answers are counted (``n_empty``) whatever the choice.

Metrics, with "yes" as the positive class (torchmetrics binary metrics): accuracy, precision, recall, F1,
``yes_ratio`` (share of "yes" predictions). Also reported, clearly apart:

* ``f1_release`` = 2·acc/(1+acc): what the L2S release prints as "F1" (its F1 against an all-true
  reference), computed from our accuracy; not POPE's F1.
* ``accuracy_first15``: the release's correctness rule (the ground-truth word appears in the first 15
  characters of the answer, case-insensitive).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchmetrics.functional.classification import binary_accuracy, binary_f1_score, binary_precision, binary_recall

from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.records import Prediction

EmptyAs = Literal["yes", "no", "wrong"]
NEGATIONS = frozenset({"no", "No", "not"})


def parse_pope_answer(text: str, empty_as: EmptyAs = "yes", label: str | None = None) -> str:
    """ "yes" or "no" for a free-text answer (official POPE rule; see the module docstring)."""
    if not text.strip():
        if empty_as == "wrong":
            if label not in {"yes", "no"}:
                raise L2SInputError("empty_as='wrong' needs the label")
            return "no" if label == "yes" else "yes"
        if empty_as not in {"yes", "no"}:
            raise L2SInputError(f"empty_as={empty_as!r} must be 'yes', 'no' or 'wrong'")
        return empty_as
    first = text.split(".")[0].replace(",", "")
    return "no" if any(word in NEGATIONS for word in first.split()) else "yes"


def first15_correct(label: str, response: str) -> bool:
    """The release's rule: the ground-truth word is in the first 15 characters (case-insensitive)."""
    return label.lower() in response[:15].lower()


def pope_scores(labels: Sequence[str], predictions: Sequence[str]) -> dict:
    """Accuracy, precision, recall, F1 (positive = "yes"), yes-ratio, release F1 and n."""
    if len(labels) != len(predictions):
        raise L2SInputError("labels and predictions differ in length")
    if not labels:
        return {
            "n": 0,
            "accuracy": None,
            "precision": None,
            "recall": None,
            "f1": None,
            "yes_ratio": None,
            "f1_release": None,
        }
    target = torch.tensor([label == "yes" for label in labels], dtype=torch.long)
    preds = torch.tensor([p == "yes" for p in predictions], dtype=torch.long)
    accuracy = float(binary_accuracy(preds, target))
    return {
        "n": len(labels),
        "accuracy": accuracy,
        "precision": float(binary_precision(preds, target)),
        "recall": float(binary_recall(preds, target)),
        "f1": float(binary_f1_score(preds, target)),
        "yes_ratio": float(preds.float().mean()),
        "f1_release": 2 * accuracy / (1 + accuracy),
    }


def subset_of(row: Prediction) -> str:
    """The POPE subset of a row: its ``subset`` field, else its ``category``, else "all"."""
    return row.subset or row.category or "all"


def pope_metrics(rows: Sequence[Prediction], empty_as: EmptyAs = "yes") -> tuple[dict, dict[str, dict], list[dict]]:
    """Summary (all rows), per-subset metrics and per-row parses of one run."""
    parsed = [parse_pope_answer(row.response, empty_as, row.label) for row in rows]
    first15 = [first15_correct(row.label, row.response) for row in rows]
    subsets = [subset_of(row) for row in rows]

    def block(mask: list[bool]) -> dict:
        labels = [row.label for row, m in zip(rows, mask) if m]
        out = pope_scores(labels, [p for p, m in zip(parsed, mask) if m])
        hits = [f for f, m in zip(first15, mask) if m]
        out["accuracy_first15"] = sum(hits) / len(hits) if hits else None
        out["n_empty"] = sum(row.is_empty for row, m in zip(rows, mask) if m)
        return out

    summary = block([True] * len(rows))
    per_subset = {name: block([s == name for s in subsets]) for name in sorted(set(subsets))}
    per_row = [
        {"id": row.id, "subset": s, "label": row.label, "parsed": p, "correct": p == row.label, "empty": row.is_empty}
        for row, s, p in zip(rows, subsets, parsed)
    ]
    return summary, per_subset, per_row
