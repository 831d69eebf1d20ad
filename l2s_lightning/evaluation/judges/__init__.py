"""Judges of responses behind one interface (:class:`Judge`): ``keyword`` (offline), ``causal_lm``, ``http``."""

from l2s_lightning.errors import JudgeError, JudgeUnavailableError
from l2s_lightning.evaluation.judges.base import Judge, describe_judge, fill_template
from l2s_lightning.evaluation.judges.keyword import KeywordJudge
from l2s_lightning.evaluation.judges.registry import JUDGES, build_judge

__all__ = [
    "JUDGES",
    "Judge",
    "JudgeError",
    "JudgeUnavailableError",
    "KeywordJudge",
    "build_judge",
    "describe_judge",
    "fill_template",
]
