"""`l2s run`: the whole L2S loop on one config: extract → fit (L2S + baselines) → predict every method on
the test split → evaluate (judge scores and behaviour log-odds) → side-by-side table, JSON and plots."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from l2s_lightning.cli import parse_dataclass_config
from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.config import EvalConfig, resolve_eval_config
from l2s_lightning.models.loading import ModelCache
from l2s_lightning.readers import read_yaml
from l2s_lightning.steerer import Steerer

ALL_METHODS = ["none", "prompt", "mean", "mean_ba", "random", "p2s_oracle", "l2s"]


@dataclass
class RunConfig:
    """What ``l2s run`` does.

    Args:
        out_dir: everything goes here (features, split, steerers, predictions, evaluation, report).
        extract_config / fit_config / predict_config: the sub-commands' YAML configs.
        limit_per_category: rows per category and split (a quick run), e.g. ``{train: 40, test: 8}``.
        methods: the methods predicted and compared.
        alpha: α for every steering method (None: each steerer's ``default_alpha``).
        max_new_tokens: generation length.
        evaluate_config: an ``l2s evaluate`` YAML (judge, safety, ...; examples in ``configs/evaluate/``);
            None: the defaults (keyword judge).
        judge: the judge, on top of ``evaluate_config`` as ``l2s evaluate --judge`` does: a name
            (``keyword`` works offline) or ``{name: causal_lm|http|..., kwargs: {...}}``; None: the YAML's judge.
        logodds_templates: continuations scored by the log-odds metric (None to skip it).
    """

    out_dir: str = "outputs/smollm2_quick"
    extract_config: str = "configs/extract/smollm2_mmsafetybench.yaml"
    fit_config: str = "configs/fit/smollm2.yaml"
    predict_config: str = "configs/predict/smollm2_mmsafetybench.yaml"
    limit_per_category: dict[str, int] | None = None
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    alpha: float | None = None
    max_new_tokens: int = 48
    evaluate_config: str | None = None
    judge: str | dict[str, Any] | None = None
    logodds_templates: str | None = "logodds_eval"
    extra_extract_args: list[str] = field(default_factory=list)
    extra_fit_args: list[str] = field(default_factory=list)
    extra_predict_args: list[str] = field(default_factory=list)


def _limit_args(config: RunConfig) -> list[str]:
    return [f"--data.limit_per_category={json.dumps(config.limit_per_category)}"] if config.limit_per_category else []


def run_pipeline(config: RunConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every stage (each one resumes: finished work is kept) and return the combined report."""
    unknown = sorted(set(config.methods) - set(ALL_METHODS))
    if unknown:
        raise L2SInputError(f"methods {unknown} are not among {ALL_METHODS}")
    eval_config = resolve_eval_config(config.evaluate_config, config.judge, where="l2s run")  # fails before extraction
    if config.logodds_templates or eval_config.safety.names_categories:
        rows = predict_rows(config.predict_config, config.extra_predict_args)
        if rows is not None:
            check_logodds_templates(config, rows)
            check_safety_categories(eval_config, rows, "l2s run")

    from l2s_lightning.evaluation import evaluate_predictions
    from l2s_lightning.extraction.cli import extract_main
    from l2s_lightning.generation.cli import predict_main
    from l2s_lightning.training.cli import fit_main

    console = console or Console()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    common = [f"--data.split_file={out / 'split.json'}", *_limit_args(config)]

    start = time.time()
    console.rule("[bold]1/4 extract")
    extract_main(
        [
            "--config",
            config.extract_config,
            f"--writer.output={out / 'features.h5'}",
            *common,
            *config.extra_extract_args,
        ]
    )
    timings["extract_s"] = time.time() - start

    start = time.time()
    console.rule("[bold]2/4 fit")
    fit_main(
        [
            "--config",
            config.fit_config,
            "--method=all",
            f"--out_dir={out}",
            f"--data.features={out / 'features.h5'}",
            *config.extra_fit_args,
        ]
    )
    timings["fit_s"] = time.time() - start

    start = time.time()
    console.rule("[bold]3/4 predict")
    predictions = []
    models = ModelCache()  # one model for every method's predictions and the log-odds
    for method in config.methods:
        target = out / "predictions" / f"{method}.jsonl"
        args = [
            "--config",
            config.predict_config,
            f"--model.method={method}",
            f"--writer.output={target}",
            f"--model.max_new_tokens={config.max_new_tokens}",
            *common,
            *config.extra_predict_args,
        ]
        if method in {"none", "prompt"}:
            args.append("--model.steerer=null")  # whatever the predict config names
        else:
            args.append(f"--model.steerer={out / 'steerers' / method}")
            if config.alpha is not None:
                args.append(f"--model.alpha={config.alpha}")
        predict_main(args, models=models)
        predictions.append(str(target))
    timings["predict_s"] = time.time() - start

    start = time.time()
    console.rule("[bold]4/4 evaluate")
    logodds = run_logodds(config, out, models) if config.logodds_templates else {}
    models.clear()  # before the judge loads
    metrics = evaluate_predictions(predictions, out_dir=out / "eval", config=eval_config)
    timings["evaluate_s"] = time.time() - start
    report = build_report(config, metrics, logodds, timings)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(report_markdown(report))
    print_report(report, console)
    return report


def run_logodds(config: RunConfig, out: Path, models: ModelCache | None = None) -> dict[str, dict[str, float]]:
    """Mean behaviour log-odds per method and behaviour on the test split (vectors from the stored h), with
    the predict config's model (taken from ``models`` when given)."""
    from l2s_lightning.data.datamodule import PromptDataModule
    from l2s_lightning.features import FeatureFile
    from l2s_lightning.models.loading import ModelSpec
    from l2s_lightning.prompts import baseline_instructions
    from l2s_lightning.scoring import behaviour_log_odds
    from l2s_lightning.templates import load_templates

    predict_cfg = read_yaml(config.predict_config)
    loaded = (models or ModelCache()).get(ModelSpec(**predict_cfg["model"]["model"]))
    data_cfg = dict(predict_cfg["data"])
    source = _predict_source(data_cfg.pop("source"))
    data_cfg |= {
        "split_file": str(out / "split.json"),
        "splits": ["test"],
        "limit_per_category": config.limit_per_category,
    }
    data = PromptDataModule(source, **data_cfg)
    dataset = data.predict_dataloader().dataset
    items = [dataset[i] for i in range(len(dataset))]
    eval_templates = load_templates(config.logodds_templates)
    features = FeatureFile(out / "features.h5")
    row_of = {str(sample_id): i for i, sample_id in enumerate(features.sample_id)}
    context = torch.from_numpy(features.read([row_of[item.id] for item in items], columns=("context",))["context"])
    results: dict[str, dict[str, float]] = {}
    for method in config.methods:
        scores = []
        for i in range(0, len(items), 16):
            batch = items[i : i + 16]
            vectors, layer, instructions = None, None, None
            if method == "prompt":
                instructions = baseline_instructions(batch, data.templates.prompt_baseline)
            elif method != "none":
                steerer = Steerer.load(out / "steerers" / method)
                alpha = steerer.default_alpha if config.alpha is None else config.alpha
                vectors = alpha * steerer.vectors(
                    context[i : i + 16], [it.behaviour for it in batch], [it.id for it in batch]
                )
                layer = steerer.layer_steer
            scores.append(behaviour_log_odds(loaded, batch, eval_templates, vectors, layer, instructions))
        values = torch.cat(scores)
        results[method] = {
            behaviour: values[torch.tensor([it.behaviour == behaviour for it in items])].mean().item()
            for behaviour in sorted({it.behaviour for it in items})
        }
    return results


def _predict_source(source_cfg: dict[str, Any]):
    """The data source of a predict config's ``data.source`` (``class_path`` + ``init_args``)."""
    module_name, class_name = source_cfg["class_path"].rsplit(".", 1)
    return getattr(__import__(module_name, fromlist=[class_name]), class_name)(**source_cfg.get("init_args", {}))


# predict arguments that change which rows are read (others, e.g. --data.batch_size, leave them as they are)
_DATA_READING_ARGS = ("--data.source", "--data.use_images")
_WHOLE_CONFIG_ARGS = ("--data", "--config")


def predict_rows(predict_config: str | Path, extra_predict_args: list[str] | None = None) -> Any:
    """The rows of a predict config's data source (a ``datasets.Dataset``, read as its ``data.use_images``
    says), for the up-front checks; None when ``extra_predict_args`` change what is read (the source,
    ``use_images`` or another config file): the checks are then left to the stages themselves."""
    from l2s_lightning.data.datamodule import source_for_images

    names = [arg.split("=", 1)[0] for arg in extra_predict_args or ()]
    if any(name.startswith(_DATA_READING_ARGS) or name in _WHOLE_CONFIG_ARGS for name in names):
        return None
    data = read_yaml(predict_config)["data"]
    return source_for_images(_predict_source(data["source"]), bool(data.get("use_images", True))).load()


def check_logodds_templates(config: RunConfig, rows: Any) -> None:
    """Before any work: the log-odds templates have a behaviour for every category of the predict config's
    data ``rows`` (the default ``logodds_eval`` covers MM-SafetyBench's scenarios only)."""
    if not config.logodds_templates:
        return
    from l2s_lightning.templates import load_templates

    templates = load_templates(config.logodds_templates)
    for category, sample_id in dict(zip(rows["category"], rows["id"])).items():
        try:
            templates.behaviour_of(category, sample_id)
        except ValueError as err:
            raise L2SInputError(
                f"l2s run: logodds_templates: {err}; give templates covering the data, or logodds_templates: null"
            ) from None


def check_safety_categories(eval_config: EvalConfig, rows: Any, where: str) -> None:
    """Before any work: each entry of the evaluation's ``unsafe_scenarios`` / ``ed_scenarios`` names a category
    of the data source's ``rows`` (or, for MM-SafetyBench data, a scenario); POPE data is not checked. A category
    that the test split or ``data.categories`` leaves out passes here and fails at the evaluation. Errors start
    with ``where``."""
    from l2s_lightning.evaluation.safety import group_of

    present = {
        group_of(category, benchmark == "mm_safetybench")  # grouped as the evaluation will group them
        for category, benchmark in zip(rows["category"], rows["benchmark"])
        if benchmark in ("mm_safetybench", "jsonl")
    } - {None}
    if not present:
        return
    try:
        eval_config.safety.check_categories(present)
    except ValueError as err:
        raise L2SInputError(f"{where}: {err}") from None


def build_report(
    config: RunConfig, metrics: dict[str, Any], logodds: dict[str, dict[str, float]], timings: dict[str, float]
) -> dict[str, Any]:
    """One row per method: unsafe score, ED-score, quality, log-odds (of the data's benchmark: MM-SafetyBench, or
    the one present, e.g. a JSONL dataset's)."""
    rows = []
    benchmarks = metrics["benchmarks"]
    benchmark = "mm_safetybench" if "mm_safetybench" in benchmarks else next(iter(benchmarks))
    runs = benchmarks[benchmark]["runs"]
    by_method = {run["method"]: run for run in runs}
    for method in config.methods:
        summary = by_method.get(method, {}).get("summary", {})
        row = {"method": method, "alpha": by_method.get(method, {}).get("alpha")}
        row |= {key: summary.get(key) for key in ("unsafe@0.5", "unsafe@0.7", "unsafe@0.9", "ed_score", "quality", "n")}
        row |= {f"logodds_{b}": v for b, v in logodds.get(method, {}).items()}
        rows.append(row)
    pooled = next((run["summary"].get("unsafe_scenarios") for run in runs), None)
    return {
        "config": config.__dict__,
        "judge": metrics.get("judge"),
        "benchmark": benchmark,
        "unsafe_scenarios": pooled,
        "rows": rows,
        "timings": timings,
    }


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
    console.print("timings: " + ", ".join(f"{k}={v:.0f}s" for k, v in report["timings"].items()))


def parse_run_config(argv: list[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` of ``l2s run`` arguments (``--config FILE`` and/or ``--field value``)."""
    return parse_dataclass_config(RunConfig, "l2s run", __doc__, argv)


def run_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s run``."""
    run_pipeline(parse_run_config(argv))
    return 0
