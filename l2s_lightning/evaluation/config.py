"""Evaluation settings: the judge, and per-benchmark options; from a YAML file, a dict, or defaults.

YAML (every key optional)::

    judge:
      name: keyword            # keyword | causal_lm | http | module:Class
      kwargs: {}               # passed to the judge's constructor
    safety:
      thresholds: [0.5, 0.7, 0.9]
      step: 0.02
      unsafe_scenarios: ["01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12"]
      ed_scenarios: ["10", "11", "12"]
      ed_phrases: ed_phrases.txt
      quality: true
    pope:
      empty_as: "yes"          # yes (official POPE) | no | wrong
    chair:
      instances: [annotations/instances_val2014.json]
      captions: [annotations/captions_val2014.json]
      synonyms: chair_synonyms.txt
    plots: true
    scores: true               # write per-row scores.jsonl
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from l2s_lightning.evaluation.safety import SafetyConfig


@dataclass
class PopeConfig:
    """POPE options: how an empty answer is read ("yes" as the official script, "no", or "wrong")."""

    empty_as: str = "yes"

    def __post_init__(self) -> None:
        if self.empty_as not in ("yes", "no", "wrong"):
            raise ValueError(f"pope.empty_as={self.empty_as!r} must be 'yes', 'no' or 'wrong'")


@dataclass
class ChairConfig:
    """CHAIR ground truth: COCO instance and caption annotation JSON files, and the synonym list."""

    instances: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    synonyms: str = "chair_synonyms.txt"


@dataclass
class EvalConfig:
    """Everything ``evaluate_predictions`` needs besides the prediction files."""

    judge: dict[str, Any] = field(default_factory=lambda: {"name": "keyword", "kwargs": {}})
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    pope: PopeConfig = field(default_factory=PopeConfig)
    chair: ChairConfig = field(default_factory=ChairConfig)
    plots: bool = True
    scores: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EvalConfig:
        data = dict(data or {})
        _check_keys(data, cls, "evaluation config")
        sections = {"safety": SafetyConfig, "pope": PopeConfig, "chair": ChairConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                value = dict(value or {})
                _check_keys(value, sections[key], key)
                if key == "chair":
                    value = {k: ([v] if isinstance(v, str) and k != "synonyms" else v) for k, v in value.items()}
                kwargs[key] = sections[key](**value)
            elif key == "judge":
                judge = value if isinstance(value, Mapping) else {"name": value}
                if "name" not in judge or set(judge) - {"name", "kwargs"}:
                    raise ValueError(f"judge: needs 'name' and optional 'kwargs', got {sorted(judge)}")
                kwargs[key] = {"name": str(judge["name"]), "kwargs": dict(judge.get("kwargs") or {})}
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> EvalConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation config not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if data is not None and not isinstance(data, Mapping):
            raise ValueError(f"{path}: the config must be a mapping")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (recorded in metrics.json)."""
        return {
            "judge": self.judge,
            "safety": {f.name: getattr(self.safety, f.name) for f in dataclasses.fields(self.safety)},
            "pope": dataclasses.asdict(self.pope),
            "chair": dataclasses.asdict(self.chair),
            "plots": self.plots,
            "scores": self.scores,
        }


def _check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: {sorted(allowed)})")
