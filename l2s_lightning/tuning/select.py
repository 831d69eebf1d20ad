"""The tuner's choice among measured settings: the highest behaviour score within the budgets.

A candidate is one (L', L*, strength, positions, steer_tokens) setting with its validation metrics: the
``behaviour_score`` (macro mean of each target behaviour's success rate), ``degenerate_share`` and, when the
data has rows to answer normally, ``coherent_answer_rate``. Within budget: degenerate share at most
``max_degenerate`` and coherent answers at least ``min_answer_ratio`` times the unsteered rate. Among those the
highest score wins (ties: the smaller strength, then the fewer steered tokens, then the earlier candidate). When
none is within budget, the one that exceeds the budgets least is returned, marked as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from l2s_lightning.errors import L2SInputError


@dataclass(frozen=True)
class Budgets:
    """How much a chosen setting may break and what it must reach: ``max_degenerate`` (share of answers),
    ``min_answer_ratio`` (coherent answers to benign questions, relative to no steering), ``min_success`` (a floor
    on the success rate of each behaviour named)."""

    max_degenerate: float = 0.1
    min_answer_ratio: float = 0.9
    min_success: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = {"max_degenerate": self.max_degenerate, "min_answer_ratio": self.min_answer_ratio}
        values |= {f"min_success.{name}": value for name, value in self.min_success.items()}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise L2SInputError(f"budgets.{name}={value!r} must be a number in [0, 1]")


@dataclass(frozen=True)
class Choice:
    """The chosen candidate, whether it is within the budgets, and whether it beats no steering."""

    candidate: dict[str, Any]
    within_budget: bool
    improves: bool


def excess(candidate: dict[str, Any], baseline: dict[str, Any], budgets: Budgets) -> float:
    """How far ``candidate`` is outside the budgets (0 inside): degenerate share over its cap plus the coherent
    answer rate and each floored behaviour's success rate under their floors."""
    over = max(0.0, _number(candidate, "degenerate_share") - budgets.max_degenerate)
    answer, base = candidate.get("coherent_answer_rate"), baseline.get("coherent_answer_rate")
    if answer is not None and base is not None:
        over += max(0.0, budgets.min_answer_ratio * base - answer)
    success = candidate.get("success", {})
    for name, floor in budgets.min_success.items():
        if success.get(name) is None:
            raise L2SInputError(f"budgets.min_success names {name!r}, not a behaviour of the validation rows")
        over += max(0.0, floor - float(success[name]))
    return over


def _number(candidate: dict[str, Any], key: str) -> float:
    value = candidate.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise L2SInputError(f"candidate {candidate.get('name', candidate)} has no {key}")
    return float(value)


def _order(candidate: dict[str, Any]) -> tuple[float, float]:
    tokens = candidate.get("steer_tokens")
    return float(candidate.get("strength", 0.0)), math.inf if tokens is None else float(tokens)


def choose(candidates: Sequence[dict[str, Any]], baseline: dict[str, Any], budgets: Budgets) -> Choice:
    """The best candidate by the rules of the module docstring (``baseline``: the unsteered run's metrics)."""
    if not candidates:
        raise L2SInputError("l2s tune: no candidate settings were measured")
    indexed = list(enumerate(candidates))
    allowed = [(i, c) for i, c in indexed if excess(c, baseline, budgets) == 0.0]
    if allowed:
        i, best = min(allowed, key=lambda ic: (-_number(ic[1], "behaviour_score"), *_order(ic[1]), ic[0]))
        within = True
    else:
        i, best = min(
            indexed, key=lambda ic: (excess(ic[1], baseline, budgets), -_number(ic[1], "behaviour_score"), ic[0])
        )
        within = False
    improves = _number(best, "behaviour_score") > _number(baseline, "behaviour_score")
    return Choice(candidate=best, within_budget=within, improves=improves)
