"""The judge interface (its errors live in :mod:`l2s_lightning.errors`), prompt templates and the registry that builds a judge from config."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from l2s_lightning.errors import JudgeError, L2SInputError
from l2s_lightning.evaluation.resources import resource_text


@runtime_checkable
class Judge(Protocol):
    """Scores responses: ``p_unsafe`` in [0, 1] and ``quality`` in [1, 10], one value per (prompt, response)."""

    def p_unsafe(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...

    def quality(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


# name -> "module:Class", imported on use so that the keyword judge needs neither torch models nor HTTP.
JUDGES: dict[str, str] = {
    "keyword": "l2s_lightning.evaluation.judges.keyword:KeywordJudge",
    "causal_lm": "l2s_lightning.evaluation.judges.causal_lm:CausalLMJudge",
    "http": "l2s_lightning.evaluation.judges.http:HttpJudge",
}


def build_judge(spec: str | Mapping[str, Any] | Judge | None = None, **kwargs: Any) -> Judge:
    """A judge from a name and kwargs, a ``{"name": ..., "kwargs": {...}}`` mapping, or a judge (returned as is).

    ``None`` gives the offline ``keyword`` judge. A ``module:Class`` name loads a judge of one's own.
    """
    if spec is None:
        spec = "keyword"
    if not isinstance(spec, (str, Mapping)):
        if not isinstance(spec, Judge):
            raise TypeError(f"{type(spec).__name__} is not a judge (needs p_unsafe and quality methods)")
        return spec
    if isinstance(spec, Mapping):
        parsed = judge_spec(spec)
        kwargs = {**parsed["kwargs"], **kwargs}
        spec = parsed["name"]
    cls = judge_class(spec)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise L2SInputError(f"judge {spec!r}: bad kwargs {sorted(kwargs)} ({err})") from None


def judge_spec(value: str | Mapping[str, Any], where: str = "judge") -> dict[str, Any]:
    """``{"name", "kwargs"}`` from a judge name or a ``{name, kwargs}`` mapping; ValueError naming ``where``."""
    judge = {"name": value} if isinstance(value, str) else value
    if not isinstance(judge, Mapping) or "name" not in judge or set(judge) - {"name", "kwargs"}:
        got = sorted(judge) if isinstance(judge, Mapping) else repr(judge)
        raise L2SInputError(f"{where}: needs a judge name or a mapping with 'name' and optional 'kwargs', got {got}")
    kwargs = judge.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise L2SInputError(f"{where}.kwargs: must be a mapping, got {kwargs!r}")
    return {"name": str(judge["name"]), "kwargs": dict(kwargs)}


def judge_class(name: str) -> type:
    """The class of a registered judge name or of a ``module:Class`` path (imported, not instantiated)."""
    target = JUDGES.get(name, name)
    if ":" not in target:
        raise L2SInputError(f"unknown judge {name!r}: one of {sorted(JUDGES)} or 'module:Class'")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise L2SInputError(f"judge {name!r}: cannot import {target!r} ({err})") from None


def check_judge_kwargs(name: str, kwargs: Mapping[str, Any], where: str = "judge") -> None:
    """Raise ValueError (naming ``where``) when ``kwargs`` do not fit the judge's constructor.

    Cheap: the class is imported and its signature checked; no model is loaded and no server called.
    """
    cls = judge_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        params = [p for p in inspect.signature(cls).parameters if p != "self"]
        raise L2SInputError(
            f"{where}: judge {name!r} does not take kwargs {sorted(kwargs)} ({err}; it takes {params})"
        ) from None


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
