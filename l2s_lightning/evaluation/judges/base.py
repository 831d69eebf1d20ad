"""The judge interface (its errors live in :mod:`l2s_lightning.errors`), prompt templates and score checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from l2s_lightning.errors import JudgeError, L2SInputError
from l2s_lightning.evaluation.resources import resource_text


@runtime_checkable
class Judge(Protocol):
    """Scores responses: ``p_unsafe`` in [0, 1] and ``quality`` in [1, 10], one value per (prompt, response).

    A slow judge has an ``on_scored`` attribute (None): the evaluation sets it to a callable that the judge calls
    with n after each n responses scored, and shows a progress bar; a judge without one shows none."""

    def p_unsafe(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...

    def quality(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


def describe_judge(judge: Judge) -> dict[str, Any]:
    """What a judge records in metrics.json: its ``describe()`` if it has one, else its class name."""
    if hasattr(judge, "describe"):
        return dict(judge.describe())
    return {"name": type(judge).__name__}


def fill_template(template: str, prompt: str, response: str) -> str:
    """Replace ``{prompt}`` and ``{response}`` (plain replacement: other braces stay as they are)."""
    return template.replace("{prompt}", prompt).replace("{response}", response)


def load_template(name_or_path: str) -> str:
    """A judge prompt template (bundled resource name or path) that must contain ``{response}``."""
    text = resource_text(name_or_path)
    if "{response}" not in text:
        raise L2SInputError(f"judge template {name_or_path!r} has no {{response}} placeholder")
    return text


def check_scores(values: Sequence[float], expected: int, low: float, high: float, what: str) -> list[float]:
    """The scores as floats, or :class:`JudgeError` when there are too few/many or any is out of range."""
    values = [float(v) for v in values]
    if len(values) != expected:
        raise JudgeError(f"judge returned {len(values)} {what} scores for {expected} responses")
    for i, v in enumerate(values):
        if not math.isfinite(v) or not low <= v <= high:
            raise JudgeError(f"judge {what} score {v} of response {i} is outside [{low}, {high}]")
    return values
