"""Judges of responses behind one interface (:class:`Judge`): ``keyword`` (offline), ``causal_lm``, ``http``."""

from l2s_lightning.errors import JudgeError, JudgeUnavailableError
from l2s_lightning.evaluation.judges.base import (
    JUDGES,
    Judge,
    build_judge,
    describe_judge,
    fill_template,
)
from l2s_lightning.evaluation.judges.keyword import KeywordJudge

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
