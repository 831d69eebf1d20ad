"""`l2s run`: the whole L2S loop on one config: extract → fit (L2S + baselines) → predict every method on
the test split → evaluate (judge scores and behaviour log-odds) → side-by-side table, JSON and plots."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from rich.table import Table

from l2s_lightning.config import config_record, fields_dict, parse_dataclass_config
from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.bootstrap import macro_mean, paired_difference_ci
from l2s_lightning.evaluation.config import resolve_eval_config
from l2s_lightning.extraction.cli import load_config as load_extract_config
from l2s_lightning.generation.cli import load_config as load_predict_config
from l2s_lightning.jsonl import iter_jsonl
from l2s_lightning.methods import ALL_METHODS, METHOD_REGISTRY, MethodName
from l2s_lightning.models.loading import ModelCache
from l2s_lightning.stages import evaluate, extract, fit, predict
from l2s_lightning.stages.checks import check_logodds_templates, check_safety_categories, data_rows
from l2s_lightning.stages.common import PromptDataSettings
from l2s_lightning.stages.extract import ExtractConfig
from l2s_lightning.stages.fit import FitConfig
from l2s_lightning.stages.predict import PredictConfig
from l2s_lightning.steerer import Steerer
from l2s_lightning.training.cli import load_config as load_fit_config


@dataclass
class RunConfig:
    """What ``l2s run`` does.

    Args:
        out_dir: everything goes here (features, split, steerers, predictions, evaluation, report).
        extract_config / fit_config / predict_config: the sub-commands' YAML configs.
        limit_per_category: rows per category and split (a quick run), e.g. ``{train: 40, test: 8}``.
        methods: the methods predicted and compared.
        alpha: α for every steering method, or per method (``{mean: 0.8, l2s: 1.25}``; a method not named, or
            None: the predict config's α, else the steerer's ``default_alpha``).
        max_new_tokens: generation length.
        evaluate_config: an ``l2s evaluate`` YAML (judge, safety, ...; examples in ``configs/evaluate/``);
            None: the defaults (keyword judge).
        judge: the judge, on top of ``evaluate_config`` as ``l2s evaluate --judge`` does: a name
            (``keyword`` works offline) or ``{name: causal_lm|http|..., kwargs: {...}}``; None: the YAML's judge.
        logodds_templates: continuations scored by the log-odds metric (None to skip it).
        extract_overrides / fit_overrides / predict_overrides: more settings of a stage's config, as dotted keys
            (``{data.batch_size: 4, model.positions: all}``), applied to its YAML as its command line would be;
            what the run sets itself (output paths, split file, ``limit_per_category``, ``method``, steerer,
            ``alpha``, ``max_new_tokens``) wins over them.
        extra_extract_args / extra_fit_args / extra_predict_args: the same in the older, command-line form
            (``["--data.batch_size=4"]``), applied before the mappings.
    """

    out_dir: str = "outputs/smollm2_quick"
    extract_config: str = "configs/extract/smollm2_mmsafetybench.yaml"
    fit_config: str = "configs/fit/smollm2.yaml"
    predict_config: str = "configs/predict/smollm2_mmsafetybench.yaml"
    limit_per_category: dict[str, int] | None = None
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    alpha: float | dict[str, float] | None = None
    max_new_tokens: int = 48
    evaluate_config: str | None = None
    judge: str | dict[str, Any] | None = None
    logodds_templates: str | None = "logodds_eval"
    extract_overrides: dict[str, Any] = field(default_factory=dict)
    fit_overrides: dict[str, Any] = field(default_factory=dict)
    predict_overrides: dict[str, Any] = field(default_factory=dict)
    extra_extract_args: list[str] = field(default_factory=list)
    extra_fit_args: list[str] = field(default_factory=list)
    extra_predict_args: list[str] = field(default_factory=list)


@dataclass
class StageConfigs:
    """The stage configs of a run: each YAML read once, with the run's overrides and settings."""

    extract: ExtractConfig
    fit: FitConfig
    predict: PredictConfig  # the base of every method's run (its method, steerer and output are set per method)


def stage_configs(config: RunConfig) -> StageConfigs:
    """Read the three stage YAMLs (a bad one stops the run before any work) and set what the run decides: output
    paths under ``out_dir``, the shared split file, ``limit_per_category``, ``method: all``, ``max_new_tokens``."""
    out = Path(config.out_dir)
    extract_cfg = load_extract_config(config.extract_config, config.extract_overrides, config.extra_extract_args)
    fit_cfg = load_fit_config(config.fit_config, config.fit_overrides, config.extra_fit_args)
    predict_cfg = load_predict_config(config.predict_config, config.predict_overrides, config.extra_predict_args)
    features = str(out / "features.h5")
    return StageConfigs(
        extract=replace(
            extract_cfg, writer=replace(extract_cfg.writer, output=features), data=_run_data(config, extract_cfg.data)
        ),
        fit=replace(fit_cfg, method="all", out_dir=str(out), data=replace(fit_cfg.data, features=features)),
        predict=replace(
            predict_cfg,
            model=replace(predict_cfg.model, max_new_tokens=config.max_new_tokens),
            data=_run_data(config, predict_cfg.data),
        ),
    )


def _run_data(config: RunConfig, data: PromptDataSettings) -> PromptDataSettings:
    """``data`` with the run's split file and, when the run has one, its ``limit_per_category``."""
    return replace(
        data,
        split_file=str(Path(config.out_dir) / "split.json"),
        limit_per_category=config.limit_per_category or data.limit_per_category,
    )


def method_config(config: RunConfig, base: PredictConfig, method: str) -> PredictConfig:
    """The predict config of ``method``: its steerer from the run's fit (none for ``none`` / ``prompt``, whatever
    the predict config names), the run's α for a steerer, and its prediction file."""
    out = Path(config.out_dir)
    model = replace(base.model, method=cast(MethodName, method), steerer=None)
    if METHOD_REGISTRY[method].has_steerer:
        alpha = config.alpha.get(method) if isinstance(config.alpha, dict) else config.alpha
        model = replace(
            model, steerer=str(out / "steerers" / method), alpha=base.model.alpha if alpha is None else alpha
        )
    return replace(base, model=model, writer=replace(base.writer, output=str(out / "predictions" / f"{method}.jsonl")))


def run_pipeline(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every stage (each one resumes: finished work is kept) and return the combined report."""
    unknown = sorted(set(config.methods) - set(ALL_METHODS))
    if unknown:
        raise L2SInputError(f"methods {unknown} are not among {ALL_METHODS}")
    if isinstance(config.alpha, dict):
        steerless = sorted(m for m in config.alpha if m not in config.methods or not METHOD_REGISTRY[m].has_steerer)
        if steerless:
            raise L2SInputError(f"alpha names {steerless}: not steering methods of this run {config.methods}")
    eval_config = resolve_eval_config(config.evaluate_config, config.judge, where="l2s run")  # fails before extraction
    stages = stage_configs(config)
    if config.logodds_templates or eval_config.safety.names_categories:
        rows = data_rows(stages.predict.data)
        check_logodds_templates(config.logodds_templates, rows, "l2s run")
        check_safety_categories(eval_config, rows, "l2s run")

    console = console or Console()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.time()
    console.rule("[bold]1/4 extract")
    extract.run(stages.extract)
    timings["extract_s"] = time.time() - start

    start = time.time()
    console.rule("[bold]2/4 fit")
    fit.run(stages.fit)
    timings["fit_s"] = time.time() - start

    start = time.time()
    console.rule("[bold]3/4 predict")
    models = ModelCache()  # one model for every method's predictions and the log-odds
    predictions = [
        predict.run(method_config(config, stages.predict, method), models=models) for method in config.methods
    ]
    timings["predict_s"] = time.time() - start

    start = time.time()
    console.rule("[bold]4/4 evaluate")
    logodds = run_logodds(config, out, models, stages.predict) if config.logodds_templates else {}
    models.clear()  # before the judge loads
    metrics = evaluate.run(predictions, out / "eval", eval_config)
    timings["evaluate_s"] = time.time() - start
    scores = read_scores(out / "eval" / "scores.jsonl") if eval_config.scores else []
    report = build_report(config, metrics, logodds, timings, scores)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(report_markdown(report))
    print_report(report, console)
    return report


def run_logodds(
    config: RunConfig, out: Path, models: ModelCache | None = None, predict_config: PredictConfig | None = None
) -> dict[str, dict[str, float]]:
    """Mean behaviour log-odds per method and behaviour on the test split (each steerer's vectors from the stored h,
    as :func:`~l2s_lightning.scoring.steerer_log_odds` adds them), with the predict config's model (taken from
    ``models`` when given; ``predict_config``: the run's, default ``stage_configs(config).predict``)."""
    from l2s_lightning.data.datamodule import PromptDataModule
    from l2s_lightning.features import FeatureFile
    from l2s_lightning.prompts import baseline_instructions
    from l2s_lightning.quiet import progress
    from l2s_lightning.scoring import batched_log_odds
    from l2s_lightning.templates import load_templates

    if not config.logodds_templates:
        raise L2SInputError("l2s run: the log-odds need logodds_templates")
    predict_cfg = predict_config or stage_configs(config).predict
    loaded = (models or ModelCache()).get(predict_cfg.model.model)
    data_cfg = replace(
        predict_cfg.data,
        split_file=str(out / "split.json"),
        splits=["test"],
        limit_per_category=config.limit_per_category,
    )
    data = PromptDataModule(**fields_dict(data_cfg))
    dataset = data.predict_dataloader().dataset
    items = [dataset[i] for i in range(len(cast(Sized, dataset)))]
    eval_templates = load_templates(config.logodds_templates)
    features = FeatureFile(out / "features.h5")
    row_of = {str(sample_id): i for i, sample_id in enumerate(features.sample_id)}
    context = torch.from_numpy(features.read([row_of[item.id] for item in items], columns=("context",))["context"])
    results: dict[str, dict[str, float]] = {}
    with progress("log-odds", len(items) * len(config.methods)) as advance:
        for method in config.methods:
            steerer = Steerer.load(out / "steerers" / method) if METHOD_REGISTRY[method].has_steerer else None
            alpha = method_config(config, predict_cfg, method).model.alpha
            prompt = baseline_instructions(items, data.templates.prompt_baseline) if method == "prompt" else None
            tokens = predict_cfg.model.steer_tokens
            values = batched_log_odds(
                loaded, items, eval_templates, steerer, context, alpha, tokens, prompt, advance=advance
            )
            results[method] = {
                behaviour: values[torch.tensor([it.behaviour == behaviour for it in items])].mean().item()
                for behaviour in sorted({it.behaviour for it in items})
            }
    return results


def predict_rows(
    predict_config: str | Path | PredictConfig, overrides: dict[str, Any] | list[str] | None = None
) -> Any:
    """The rows of a predict config's data source (a ``datasets.Dataset``, read as its ``data.use_images`` says),
    for the up-front checks; a YAML path is read with ``overrides`` (dotted keys, or the command-line form)."""
    if not isinstance(predict_config, PredictConfig):
        mapping, args = (overrides, ()) if isinstance(overrides, dict) else (None, overrides or ())
        predict_config = load_predict_config(predict_config, mapping, args)
    return data_rows(predict_config.data)


REPORT_KEYS = (
    "unsafe@0.5",
    "unsafe@0.7",
    "unsafe@0.9",
    "ed_score",
    "behaviour_score",
    "quality",
    "coherent_quality",
    "refusal_rate",
    "deferral_rate",
    "compliance_rate",
    "degenerate_share",
    "answer_perplexity",
)
ANSWER_KEYS = ("over_refusal_rate", "coherent_answer_rate")  # shown when the data has benign / answer rows
COMPARED = ("mean", "mean_ba", "prompt", "none")  # l2s is compared with each of these present
_RUN_TAG = ("method", "alpha", "model", "layer_steer")  # how scores.jsonl rows name their run


def read_scores(path: Path) -> list[dict[str, Any]]:
    """The per-row fields the evaluation wrote to ``scores.jsonl`` (none when the file is absent)."""
    return [row for _, row in iter_jsonl(path)] if path.is_file() else []


def success_by_id(run: Mapping[str, Any], benchmark: str, scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sample id → (target behaviour, 1.0 / 0.0) of the run's rows with a success rule (``scores.jsonl``)."""
    return {
        str(row["id"]): (str(row.get("behaviour") or ""), float(row["success"]))
        for row in scores
        if row.get("benchmark") == benchmark
        and row.get("success") is not None
        and all(row.get(key) == run.get(key) for key in _RUN_TAG)
    }


def _difference(a: Sequence[float], b: Sequence[float], groups: Sequence[str]) -> dict[str, Any]:
    return {
        "n": len(a),
        "difference": macro_mean(a, groups) - macro_mean(b, groups),
        "difference_ci": list(paired_difference_ci(a, b, groups)),
    }


def paired_comparison(method: str, against: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``method`` − ``against`` on the questions both answered (``success_by_id`` maps, matched by id): the
    difference in behaviour score with its paired bootstrap interval (rows resampled within each target behaviour,
    the same for both), and per target behaviour the difference in success rate."""
    ids = sorted(set(a) & set(b))
    entry: dict[str, Any] = {"method": method, "against": against, "n": len(ids), "difference": None}
    entry |= {"difference_ci": None, "per_behaviour": {}}
    if not ids:
        return entry
    groups = [a[i][0] for i in ids]
    x, y = [a[i][1] for i in ids], [b[i][1] for i in ids]
    entry |= _difference(x, y, groups)
    for name in sorted(set(groups)):
        keep = [g == name for g in groups]
        xs, ys = [v for v, k in zip(x, keep) if k], [v for v, k in zip(y, keep) if k]
        entry["per_behaviour"][name] = _difference(xs, ys, [name] * len(xs))
    return entry


def method_comparisons(
    runs: Sequence[Mapping[str, Any]], benchmark: str, methods: Sequence[str], scores: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """l2s against each method of ``COMPARED`` that ran (:func:`paired_comparison`); none without l2s or scores."""
    by_method = {run["method"]: run for run in runs if run["method"] in methods}
    if "l2s" not in by_method or not scores:
        return []
    ours = success_by_id(by_method["l2s"], benchmark, scores)
    return [
        paired_comparison("l2s", other, ours, success_by_id(by_method[other], benchmark, scores))
        for other in COMPARED
        if other in by_method
    ]


def build_report(
    config: RunConfig,
    metrics: dict[str, Any],
    logodds: dict[str, dict[str, float]],
    timings: dict[str, float],
    scores: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One row per method: unsafe score, ED-score, behaviour score, quality, the behaviour classes' rates (and,
    with benign / answer rows, over-refusal and coherent answers), log-odds (of the data's benchmark:
    MM-SafetyBench, or the one present, e.g. a JSONL dataset's); ``comparisons``: l2s against the baselines on
    the per-row ``success`` of ``scores`` (the evaluation's scores.jsonl rows; :func:`method_comparisons`)."""
    rows = []
    benchmarks = metrics["benchmarks"]
    benchmark = "mm_safetybench" if "mm_safetybench" in benchmarks else next(iter(benchmarks))
    runs = benchmarks[benchmark]["runs"]
    by_method = {run["method"]: run for run in runs}
    keys = [*REPORT_KEYS, *(key for key in ANSWER_KEYS if any(key in run["summary"] for run in runs)), "n"]
    for method in config.methods:
        summary = by_method.get(method, {}).get("summary", {})
        row = {"method": method, "alpha": by_method.get(method, {}).get("alpha")}
        row |= {key: summary.get(key) for key in keys}
        row |= {f"logodds_{b}": v for b, v in logodds.get(method, {}).items()}
        rows.append(row)
    pooled = next((run["summary"].get("unsafe_scenarios") for run in runs), None)
    return {
        "config": config_record(config),
        "judge": metrics.get("judge"),
        "benchmark": benchmark,
        "unsafe_scenarios": pooled,
        "rows": rows,
        "comparisons": method_comparisons(runs, benchmark, config.methods, scores),
        "timings": timings,
    }


def _signed(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("difference") is None:
        return "–"
    lo, hi = entry["difference_ci"]
    return f"{entry['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


COMPARISON_NOTE = (
    "behaviour_score difference (per target behaviour: success-rate difference) with a 95 % paired bootstrap "
    "interval over the questions both methods answered (matched by id, resampled within each target behaviour)."
)


def comparison_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows (``l2s − mean: +0.12 [+0.03, +0.21]``, then per target behaviour) of the report's
    comparisons; None without any."""
    comparisons = report.get("comparisons") or []
    if not comparisons:
        return None
    behaviours = sorted({name for entry in comparisons for name in entry["per_behaviour"]})
    header = ["comparison", "n", "behaviour_score", *behaviours]
    rows = [
        [f"{entry['method']} − {entry['against']}", str(entry["n"]), _signed(entry)]
        + [_signed(entry["per_behaviour"].get(name)) for name in behaviours]
        for entry in comparisons
    ]
    return header, rows


def report_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    keys = [k for k in rows[0] if k != "method"]
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if report.get("unsafe_scenarios") is not None:
        pooled = ", ".join(report["unsafe_scenarios"]) or "none"
        kind = "scenarios" if report.get("benchmark", "mm_safetybench") == "mm_safetybench" else "categories"
        lines += ["", f"unsafe@t pools the responses of {kind} {pooled}."]
    table = comparison_table(report)
    if table is not None:
        header, body = table
        lines += ["", "## Paired comparisons", "", COMPARISON_NOTE, ""]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def print_report(report: dict[str, Any], console: Console) -> None:
    rows = report["rows"]
    table = Table(title="L2S and baselines, test split")
    keys = list(rows[0])
    for key in keys:
        table.add_column(key, justify="right" if key != "method" else "left", overflow="fold")
    for row in rows:
        table.add_row(*[f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys])
    if not console.is_terminal and console.width < 160:  # a log file or pipe gets Rich's 80 columns: too narrow
        console = Console(file=console.file, width=160)
    console.print(table)
    compared = comparison_table(report)
    if compared is not None:
        header, cells = compared
        paired = Table(title="Paired comparisons (behaviour_score, 95 % bootstrap over questions)")
        for key in header:
            paired.add_column(key, justify="left" if key == "comparison" else "right", overflow="fold")
        for row in cells:
            paired.add_row(*row)
        console.print(paired)
    console.print("timings: " + ", ".join(f"{k}={v:.0f}s" for k, v in report["timings"].items()))


def parse_run_config(argv: list[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` of ``l2s run`` arguments (``--config FILE`` and/or ``--field value``)."""
    return parse_dataclass_config(RunConfig, "l2s run", __doc__, argv)


def run_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s run``."""
    run_pipeline(parse_run_config(argv))
    return 0
