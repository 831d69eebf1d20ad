"""Evaluation of steered generations: MM-SafetyBench (unsafe score, ED score, quality), POPE and CHAIR.

``evaluate_predictions(paths, judge, out_dir)`` is the programmatic entry point;
:func:`l2s_lightning.evaluation.cli.evaluate_main` is ``l2s evaluate``. Judges (``keyword``, ``causal_lm``,
``http``) share the :class:`Judge` protocol.
"""

from l2s_lightning.evaluation.chair import ChairVocabulary, chair_metrics, load_ground_truth
from l2s_lightning.evaluation.config import ChairConfig, EvalConfig, PopeConfig, resolve_eval_config
from l2s_lightning.evaluation.evaluate import evaluate_predictions
from l2s_lightning.evaluation.judges import Judge, JudgeError, JudgeUnavailableError, build_judge
from l2s_lightning.evaluation.pope import parse_pope_answer, pope_metrics, pope_scores
from l2s_lightning.evaluation.records import Prediction, PredictionFormatError, Run, group_runs, read_predictions
from l2s_lightning.evaluation.safety import SCENARIOS, SafetyConfig, safety_metrics, thresholds, unsafe_score

__all__ = [
    "SCENARIOS",
    "ChairConfig",
    "ChairVocabulary",
    "EvalConfig",
    "Judge",
    "JudgeError",
    "JudgeUnavailableError",
    "PopeConfig",
    "Prediction",
    "PredictionFormatError",
    "Run",
    "SafetyConfig",
    "build_judge",
    "chair_metrics",
    "evaluate_predictions",
    "group_runs",
    "load_ground_truth",
    "parse_pope_answer",
    "pope_metrics",
    "pope_scores",
    "read_predictions",
    "resolve_eval_config",
    "safety_metrics",
    "thresholds",
    "unsafe_score",
]
