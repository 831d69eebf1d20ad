"""The evaluate stage: metrics, tables and plots of prediction files (``l2s evaluate``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l2s_lightning.evaluation.config import EvalConfig


def run(predictions: Sequence[str | Path], out_dir: str | Path, config: EvalConfig) -> dict[str, Any]:
    """Score ``predictions`` as ``config`` says and write metrics.json, metrics.md, scores.jsonl and plots to
    ``out_dir``; returns the metrics (:func:`l2s_lightning.evaluation.evaluate.evaluate_predictions`)."""
    from l2s_lightning.evaluation.evaluate import evaluate_predictions

    return evaluate_predictions([str(path) for path in predictions], out_dir=out_dir, config=config)
