"""The judge registry: a judge from a name (``keyword``, ``causal_lm``, ``http``) or ``module:Class``, plus kwargs."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.judges.base import Judge

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
    cls = judge_class(str(spec))
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
