"""``evaluate_predictions``: prediction JSONL files → metrics per benchmark and run, written to a folder.

Output folder: ``metrics.json`` (every figure), ``metrics.md`` (tables, runs side by side), ``scores.jsonl``
(per-row judge scores / parses), and PNG plots (metric vs α per method, per-scenario / per-subset bars).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from l2s_lightning.evaluation.behaviour import BehaviourClassifier, behaviour_metrics
from l2s_lightning.evaluation.chair import ChairVocabulary, chair_metrics, image_id_of, load_ground_truth
from l2s_lightning.evaluation.config import EvalConfig
from l2s_lightning.evaluation.judges.base import Judge, check_scores, describe_judge
from l2s_lightning.evaluation.judges.registry import build_judge
from l2s_lightning.evaluation.pope import pope_metrics
from l2s_lightning.evaluation.records import PredictionFormatError, Run, group_runs
from l2s_lightning.evaluation.safety import categories_of, safety_metrics
from l2s_lightning.quiet import ProgressHook, progress

FORMAT_VERSION = 1
_JUDGED = ("mm_safetybench", "jsonl")


def _config(config: EvalConfig | Mapping[str, Any] | str | Path | None) -> EvalConfig:
    if config is None:
        return EvalConfig()
    if isinstance(config, EvalConfig):
        return config
    if isinstance(config, (str, Path)):
        return EvalConfig.from_yaml(config)
    return EvalConfig.from_dict(config)


def judge_runs(
    runs: Sequence[Run], judge: Judge, quality: bool, hook: ProgressHook | None = None
) -> dict[tuple[str, str], tuple[float, float | None]]:
    """(prompt, response) → (p_unsafe, quality) for every distinct non-empty response of the runs.

    One call per judge method over all distinct pairs (so identical answers are judged once), shown by a
    :func:`~l2s_lightning.quiet.progress` bar where the judge reports as it scores (has ``on_scored``; the
    keyword judge, instant, has none); ``hook(done, total)`` as it advances. Empty responses are not sent. Any
    judge failure propagates: no partial scores.
    """
    pairs = sorted({(row.judged_prompt, row.response) for run in runs for row in run.rows if not row.is_empty})
    if not pairs:
        return {}
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    ratings: list[float | None] = [None] * len(pairs)
    name = describe_judge(judge).get("name", type(judge).__name__)
    total, shown = len(pairs) * (2 if quality else 1), hasattr(judge, "on_scored")  # a fast judge: no bar
    with progress(f"judging ({name})", total, hook, shown) as advance:
        p_unsafe = check_scores(
            _scored(judge.p_unsafe, judge, prompts, responses, advance), len(pairs), 0.0, 1.0, "p_unsafe"
        )
        if quality:
            values = _scored(judge.quality, judge, prompts, responses, advance)
            ratings = list(check_scores(values, len(pairs), 1.0, 10.0, "quality"))
    return {pair: (p, q) for pair, p, q in zip(pairs, p_unsafe, ratings)}


def _scored(
    method: Callable[[Sequence[str], Sequence[str]], list[float]],
    judge: Judge,
    prompts: Sequence[str],
    responses: Sequence[str],
    advance: Callable[[int], None],
) -> list[float]:
    """``method(prompts, responses)``; the judge's ``on_scored`` (where it has one) advances the bar as it
    scores, the rest of the responses are counted when it returns."""
    counted, lock = 0, threading.Lock()

    def on_scored(n: int) -> None:
        nonlocal counted
        with lock:
            counted += n
        advance(n)

    reports = hasattr(judge, "on_scored")
    if reports:
        judge.on_scored = on_scored  # type: ignore[attr-defined]
    try:
        values = method(prompts, responses)
    finally:
        if reports:
            judge.on_scored = None  # type: ignore[attr-defined]
    if len(responses) > counted:
        advance(len(responses) - counted)
    return values


def safety_categories(runs: Sequence[Run]) -> set[str]:
    """Every category of the safety runs (MM-SafetyBench scenario names, a JSONL dataset's categories as written);
    an unknown MM-SafetyBench scenario is a :class:`PredictionFormatError` naming the row."""
    return {c for run in runs for c in categories_of(run.rows, run.benchmark == "mm_safetybench")}


def _run_header(run: Run) -> dict[str, Any]:
    return {
        "method": run.method,
        "alpha": run.alpha,
        "label": run.label,
        "series": run.series,
        "model": run.model,
        "layer_steer": run.layer_steer,
        "files": run.files,
    }


def _json_ready(value: Any) -> Any:
    """NaN/inf → None, recursively (metrics.json stays strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def evaluate_predictions(
    paths: Sequence[str | Path] | str | Path,
    judge: Judge | str | Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    config: EvalConfig | Mapping[str, Any] | str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate prediction JSONL files and return the metrics dict (also written to ``out_dir`` if given).

    Args:
        paths: prediction files (any mix of benchmarks, methods and α; one benchmark per file).
        judge: a judge object, a registered name, or ``{"name", "kwargs"}``; None uses ``config.judge``
            (default: the offline ``keyword`` judge). Only built when there are safety/JSONL rows.
        out_dir: folder for metrics.json, metrics.md, scores.jsonl and plots.
        config: :class:`EvalConfig`, a dict of it, or a YAML path.

    Returns ``{"format_version", "inputs", "judge", "config", "benchmarks": {name: {"runs": [...]}}}``; each
    run (one per benchmark, method, α, model and layer_steer) has ``method``, ``alpha``, ``label``, ``series``,
    ``model``, ``layer_steer``, ``files``, ``summary`` and a breakdown (``per_scenario`` / ``per_category`` /
    ``per_subset``); a safety or JSONL run also has ``per_behaviour`` (behaviour classes by target behaviour,
    :mod:`l2s_lightning.evaluation.behaviour`), its summary and categories the class rates and
    ``coherent_quality``, its scores.jsonl rows the degeneration figures and ``behaviour_class``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    cfg = _config(config)
    runs = group_runs(list(paths))
    results: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "inputs": [str(p) for p in paths],
        "judge": None,
        "config": cfg.to_dict(),
        "benchmarks": {},
    }
    score_rows: list[dict[str, Any]] = []

    # Everything that can fail on the input is checked before the (possibly slow) judge runs.
    judged_runs = [run for run in runs if run.benchmark in _JUDGED]
    categories = safety_categories(judged_runs)
    if judged_runs:  # custom category names are checked against the predictions' categories
        cfg.safety.check_categories(categories)
    chair_runs = [run for run in runs if run.benchmark == "chair"]
    vocab = truth = None
    if chair_runs:
        vocab = ChairVocabulary(cfg.chair.synonyms)
        ids = {image_id_of(row) for run in chair_runs for row in run.rows}
        truth = load_ground_truth(cfg.chair.instances, cfg.chair.captions, vocab, ids)
        for row in (row for run in chair_runs for row in run.rows):
            if image_id_of(row) not in truth:
                raise PredictionFormatError(
                    f"{row.source}: image {image_id_of(row)} is not in the COCO annotation files"
                )

    scores: dict[tuple[str, str], tuple[float, float | None]] = {}
    classifier = None
    if judged_runs:  # phrase lists are read before the judge runs
        classifier = BehaviourClassifier(cfg.behaviour, cfg.safety.ed_phrases, cfg.degeneration)
    if judged_runs:
        judge_obj = build_judge(judge if judge is not None else cfg.judge)
        scores = judge_runs(judged_runs, judge_obj, cfg.safety.quality)
        results["judge"] = describe_judge(judge_obj)  # after the scoring: it records how the verdicts were read

    for run in runs:
        entry = _run_header(run)
        if run.benchmark in _JUDGED:
            p = [0.0 if row.is_empty else scores[(row.judged_prompt, row.response)][0] for row in run.rows]
            q: list[float] | None = None
            if cfg.safety.quality:  # every rating is a number when quality is judged
                q = [
                    1.0 if row.is_empty else cast(float, scores[(row.judged_prompt, row.response)][1])
                    for row in run.rows
                ]
            strict = run.benchmark == "mm_safetybench"
            summary, groups, per_row = safety_metrics(run.rows, p, q, cfg.safety, strict, categories)
            classes = behaviour_metrics(
                run.rows, categories_of(run.rows, strict), q, cast(BehaviourClassifier, classifier)
            )
            summary.update(classes.summary)
            for name, values in classes.per_category.items():
                groups[name].update(values)
            for fields, extra in zip(per_row, classes.per_row):
                fields.update(extra)
            entry.update(summary=summary, **{"per_scenario" if strict else "per_category": groups})
            entry["per_behaviour"] = classes.per_behaviour
        elif run.benchmark == "pope":
            summary, groups, per_row = pope_metrics(run.rows, cfg.pope.empty_as)  # type: ignore[arg-type]
            entry.update(summary=summary, per_subset=groups)
        else:
            summary, per_row = chair_metrics(run.rows, truth or {}, vocab)  # type: ignore[arg-type]
            entry.update(summary=summary)
        results["benchmarks"].setdefault(run.benchmark, {"runs": []})["runs"].append(entry)
        tag = {
            "benchmark": run.benchmark,
            "method": run.method,
            "alpha": run.alpha,
            "model": run.model,
            "layer_steer": run.layer_steer,
        }
        score_rows.extend({**tag, **r} for r in per_row)

    results = _json_ready(results)
    if out_dir is not None:
        write_outputs(results, score_rows if cfg.scores else None, Path(out_dir), cfg.plots)
    return results


def write_outputs(
    results: dict[str, Any], score_rows: list[dict] | None, out_dir: Path, plots: bool = True
) -> list[Path]:
    """Write metrics.json, metrics.md, scores.jsonl (if given) and plots; return the paths written."""
    from l2s_lightning.evaluation.report import to_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "metrics.json", out_dir / "metrics.md"]
    written[0].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written[1].write_text(to_markdown(results), encoding="utf-8")
    if score_rows is not None:
        path = out_dir / "scores.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in score_rows:
                handle.write(json.dumps(_json_ready(row), ensure_ascii=False) + "\n")
        written.append(path)
    if plots:
        from l2s_lightning.evaluation.plots import write_plots

        written.extend(write_plots(results, out_dir))
    return written
