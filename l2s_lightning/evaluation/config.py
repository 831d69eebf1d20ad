"""Evaluation settings: the judge, and per-benchmark options; from a YAML file, a dict, or defaults.

YAML (every key optional; examples in ``configs/evaluate/``)::

    judge:
      name: keyword            # keyword | causal_lm | http | module:Class
      kwargs: {}               # passed to the judge's constructor
    safety:
      thresholds: [0.5, 0.7, 0.9]
      step: 0.02
      unsafe_scenarios: null   # pooled into the overall unsafe@t; null: every category present (01-13);
                               # the L2S release: ["01", "02", ..., "12"]; a JSONL dataset's own
                               # categories by name, e.g. ["violence", "medical"]
      ed_scenarios: null       # scored for ed_score (same names); null: MM-SafetyBench's 10-12, and the
                               # categories whose rows all carry one of ed_behaviours
      ed_behaviours: [consult_expert]  # behaviour names (templates) that steer toward expert deferral
      ed_phrases: ed_phrases.txt
      quality: true
    pope:
      empty_as: "yes"          # yes (official POPE) | no | wrong
    chair:
      instances: [annotations/instances_val2014.json]
      captions: [annotations/captions_val2014.json]
      synonyms: chair_synonyms.txt
    degeneration:              # when an answer counts as degenerate (evaluation/degeneration.py)
      ngram: 4
      repeated_share_limit: 0.3  # share of repeated token 4-grams; null: off
      repeated_span_limit: 20    # longest repeated token span; null: off
      garbage_share_limit: 0.3   # share of non-ASCII characters; null: off (non-Latin scripts)
    behaviour:                 # answer classes refuse/defer/comply/degenerate (evaluation/behaviour.py)
      refusal_phrases: refusal_phrases.txt
      compliance_phrases: compliance_phrases.txt
      lead_chars: 200
      answer_behaviours: [answer, benign]  # rows steered toward a normal answer (over-refusal rate)
      success: {refuse: [refuse, defer], consult_expert: [defer], answer: [comply], benign: [comply]}
                               # classes that count as success per target behaviour (behaviour_score)
    plots: true
    scores: true               # write per-row scores.jsonl
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.behaviour import BehaviourConfig
from l2s_lightning.evaluation.degeneration import DegenerationConfig
from l2s_lightning.evaluation.judges.registry import judge_spec
from l2s_lightning.evaluation.safety import SafetyConfig
from l2s_lightning.readers import read_yaml


@dataclass
class PopeConfig:
    """POPE options: how an empty answer is read ("yes" as the official script, "no", or "wrong")."""

    empty_as: str = "yes"

    def __post_init__(self) -> None:
        if self.empty_as not in ("yes", "no", "wrong"):
            raise L2SInputError(f"pope.empty_as={self.empty_as!r} must be 'yes', 'no' or 'wrong'")


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
    degeneration: DegenerationConfig = field(default_factory=DegenerationConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    plots: bool = True
    scores: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> EvalConfig:
        data = dict(data or {})
        _check_keys(data, cls, "evaluation config")
        sections = {
            "safety": SafetyConfig,
            "pope": PopeConfig,
            "chair": ChairConfig,
            "degeneration": DegenerationConfig,
            "behaviour": BehaviourConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                value = dict(value or {})
                _check_keys(value, sections[key], key)
                if key == "chair":
                    value = {k: ([v] if isinstance(v, str) and k != "synonyms" else v) for k, v in value.items()}
                kwargs[key] = sections[key](**value)
            elif key == "judge":
                kwargs[key] = judge_spec(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> EvalConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation config not found: {path}")
        data = read_yaml(path)
        if data is not None and not isinstance(data, Mapping):
            raise L2SInputError(f"{path}: the config must be a mapping")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise L2SInputError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (recorded in metrics.json)."""
        return {
            "judge": self.judge,
            "safety": {f.name: getattr(self.safety, f.name) for f in dataclasses.fields(self.safety)},
            "pope": dataclasses.asdict(self.pope),
            "chair": dataclasses.asdict(self.chair),
            "degeneration": dataclasses.asdict(self.degeneration),
            "behaviour": dataclasses.asdict(self.behaviour),
            "plots": self.plots,
            "scores": self.scores,
        }


def _check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise L2SInputError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: {sorted(allowed)})")


def merge_judge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: same name → kwargs merged (override wins); another name → replaced."""
    if override["name"] != base["name"]:
        return {"name": override["name"], "kwargs": dict(override["kwargs"])}
    return {"name": base["name"], "kwargs": {**base["kwargs"], **override["kwargs"]}}


def resolve_eval_config(
    config: str | Path | Mapping[str, Any] | None = None, judge: str | Mapping[str, Any] | None = None, where: str = ""
) -> EvalConfig:
    """The evaluation config of ``l2s run`` / ``l2s sweep``: an evaluate YAML path (or mapping, or None for
    defaults) with ``judge`` (a name or ``{name, kwargs}``) applied as ``merge_judge`` does.

    The judge's kwargs are checked against its constructor here (no model loaded, no server called), so a
    typo fails before hours of generation rather than at the evaluation.
    """
    prefix = f"{where}: " if where else ""
    try:
        cfg = EvalConfig.from_yaml(config) if isinstance(config, (str, Path)) else EvalConfig.from_dict(config)
        if judge is not None:
            cfg.judge = merge_judge(cfg.judge, judge_spec(judge, "judge"))
        from l2s_lightning.evaluation.judges.registry import check_judge_kwargs

        check_judge_kwargs(cfg.judge["name"], cfg.judge["kwargs"], "judge")
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"{prefix}{err}") from None
    return cfg
