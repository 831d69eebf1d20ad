"""`l2s sweep`: predict and evaluate a steerer over a grid of α, and choose α automatically.

The chosen α optimises the target metric (e.g. ``unsafe@0.5`` lower, ``ed_score`` higher) among the α
whose response quality stays within ``quality_budget`` (relative drop) of no steering. Quality is
``coherent_quality`` where the evaluation has it (safety and JSONL runs: the judge's rating with degenerate answers
rated 1, so a repetition loop or word salad counts against the budget), else the judge's ``quality``. The curve is saved
as a PNG and JSON, and the choice is written into the steerer's JSON (``default_alpha`` and ``sweep``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.table import Table

from l2s_lightning.config import parse_dataclass_config
from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.config import resolve_eval_config
from l2s_lightning.generation.cli import load_config as load_predict_config
from l2s_lightning.methods import MethodName
from l2s_lightning.stages import evaluate, predict
from l2s_lightning.stages.checks import check_safety_categories, data_rows
from l2s_lightning.stages.predict import PredictConfig

LOWER_IS_BETTER = ("unsafe", "chair", "mean_p_unsafe")


@dataclass
class SweepConfig:
    """What ``l2s sweep`` does.

    Args:
        steerer: the steerer folder to sweep (its JSON receives the chosen α).
        predict_config: the ``l2s predict`` YAML (model, data, generation).
        alphas: the grid.
        target: the metric to optimise, from the evaluation summary (``unsafe@0.5``, ``ed_score``, ...).
        quality_budget: the largest relative quality drop against no steering (0.1 = 10 %).
        out_dir: predictions, metrics and the plot go here (default: ``<steerer>/sweep``, so that sweeps of
            different steerers never share prediction files).
        evaluate_config: an ``l2s evaluate`` YAML (judge, safety, ...; examples in ``configs/evaluate/``);
            None: the defaults (keyword judge). Quality ratings must stay on (the budget needs them).
        judge: the judge on top of it, as ``l2s evaluate --judge``: a name (``keyword`` is offline) or
            ``{name: ..., kwargs: {...}}``; None: the YAML's judge.
        split_file / limit_per_category: passed to the predict data module.
        max_new_tokens: generation length (None: the predict config's).
        update_steerer: write the chosen α into the steerer folder.
        predict_overrides: more settings of the predict config, as dotted keys (``{model.positions: all}``),
            applied to its YAML as ``l2s predict``'s command line would be; what the sweep sets itself (the output
            files, method, steerer, α, and the three settings above when given) wins over them.
        extra_predict_args: the same in the older, command-line form (``["--model.positions=all"]``), applied
            before the mapping.
    """

    steerer: str
    predict_config: str = "configs/predict/smollm2_mmsafetybench.yaml"
    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    target: str = "unsafe@0.5"
    quality_budget: float = 0.1
    out_dir: str | None = None
    evaluate_config: str | None = None
    judge: str | dict[str, Any] | None = None
    split_file: str | None = None
    limit_per_category: dict[str, int] | None = None
    max_new_tokens: int | None = None
    update_steerer: bool = True
    predict_overrides: dict[str, Any] = field(default_factory=dict)
    extra_predict_args: list[str] = field(default_factory=list)


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def quality_key(summary: dict[str, Any]) -> str:
    """The quality the budget reads: ``coherent_quality`` when the summary has one, else ``quality``."""
    return "coherent_quality" if summary.get("coherent_quality") is not None else "quality"


def choose_alpha(
    points: list[dict[str, Any]], baseline_quality: float, target: str, budget: float, quality: str = "quality"
) -> dict[str, Any]:
    """The best point by ``target`` whose ``quality`` >= (1 - budget) * baseline; the smallest α on ties."""
    floor = (1.0 - budget) * baseline_quality
    allowed = [p for p in points if p.get(target) is not None and p.get(quality) is not None and p[quality] >= floor]
    if not allowed:
        raise L2SInputError(
            f"no α in {[p['alpha'] for p in points]} keeps quality within {budget:.0%} of no steering "
            f"({baseline_quality:.2f}); try smaller α"
        )
    sign = 1.0 if lower_is_better(target) else -1.0
    return min(allowed, key=lambda p: (sign * p[target], p["alpha"]))


def sweep_predict_config(config: SweepConfig) -> PredictConfig:
    """The predict YAML read once, with the sweep's overrides, split file, row limits and length, no progress bar."""
    base = load_predict_config(config.predict_config, config.predict_overrides, config.extra_predict_args)
    data, model = base.data, base.model
    if config.split_file:
        data = replace(data, split_file=config.split_file)
    if config.limit_per_category:
        data = replace(data, limit_per_category=config.limit_per_category)
    if config.max_new_tokens:
        model = replace(model, max_new_tokens=config.max_new_tokens)
    return replace(base, data=data, model=model, trainer={**base.trainer, "enable_progress_bar": False})


def alpha_config(
    base: PredictConfig, method: str, steerer: str | None, alpha: float | None, output: Path
) -> PredictConfig:
    """``base`` for one run of the sweep: ``method`` with ``steerer`` at ``alpha`` (None: the config's), written to
    ``output``."""
    alpha = base.model.alpha if alpha is None else alpha
    model = replace(base.model, method=cast(MethodName, method), steerer=steerer, alpha=alpha)
    return replace(base, model=model, writer=replace(base.writer, output=str(output)))


def run_sweep(config: SweepConfig, console: Console | None = None) -> dict[str, Any]:
    from l2s_lightning.models.loading import ModelCache
    from l2s_lightning.steerer import Steerer

    console = console or Console()
    eval_config = resolve_eval_config(config.evaluate_config, config.judge, where="l2s sweep")
    if not eval_config.safety.quality:
        raise L2SInputError(
            "l2s sweep: the quality budget needs quality ratings; set safety.quality: true in evaluate_config"
        )
    base = sweep_predict_config(config)
    if eval_config.safety.names_categories:
        check_safety_categories(eval_config, data_rows(base.data), "l2s sweep")
    steerer = Steerer.load(config.steerer)
    out = Path(config.out_dir) if config.out_dir else Path(config.steerer) / "sweep"
    models = ModelCache()  # one model loaded for every α
    # no steerer, whatever the predict config names (the paper configs name theirs)
    files = [predict.run(alpha_config(base, "none", None, None, out / "none.jsonl"), models=models)]
    for alpha in config.alphas:
        path = out / f"{steerer.method}_alpha{alpha:g}.jsonl"
        files.append(predict.run(alpha_config(base, steerer.method, config.steerer, alpha, path), models=models))
    models.clear()  # before the judge loads
    metrics = evaluate.run(files, out / "eval", eval_config)
    runs = next(iter(metrics["benchmarks"].values()))["runs"]
    baseline = next(r for r in runs if r["method"] == "none")["summary"]
    measure = quality_key(baseline)
    points = sorted(
        (
            {"alpha": r["alpha"], **{k: v for k, v in r["summary"].items() if isinstance(v, (int, float))}}
            for r in runs
            if r["method"] == steerer.method
        ),
        key=lambda p: p["alpha"],
    )
    try:
        chosen_alpha, failure = (
            choose_alpha(points, baseline[measure], config.target, config.quality_budget, measure)["alpha"],
            None,
        )
    except ValueError as err:  # no α within the budget: the curve is still written and shown, then the error
        chosen_alpha, failure = None, err
    result = {
        "target": config.target,
        "quality_budget": config.quality_budget,
        "quality_metric": measure,
        "chosen_alpha": chosen_alpha,
        "baseline": {k: v for k, v in baseline.items() if isinstance(v, (int, float))},
        "points": points,
    }
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot_sweep(result, out / "sweep.png")
    if failure is not None:
        print_sweep(result, console)
        raise L2SInputError(
            f"l2s sweep: {failure} (curve: {out / 'sweep.json'}, {out / 'sweep.png'}; the steerer is unchanged)"
        )
    if config.update_steerer:
        steerer.default_alpha = float(chosen_alpha)
        steerer.sweep = {k: v for k, v in result.items() if k != "points"} | {"curve": str(out / "sweep.json")}
        steerer.save(config.steerer)
    print_sweep(result, console)
    return result


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [p["alpha"] for p in result["points"]]
    fig, left = plt.subplots(figsize=(6, 4))
    left.plot(
        alphas, [p.get(result["target"]) for p in result["points"]], "o-", color="tab:red", label=result["target"]
    )
    left.set_xlabel("α")
    left.set_ylabel(result["target"], color="tab:red")
    right = left.twinx()
    measure = result.get("quality_metric", "quality")
    right.plot(alphas, [p.get(measure) for p in result["points"]], "s--", color="tab:blue", label=measure)
    floor = (1 - result["quality_budget"]) * result["baseline"][measure]
    right.axhline(floor, color="tab:blue", alpha=0.4, linestyle=":", label="quality budget")
    right.set_ylabel(measure, color="tab:blue")
    if result["chosen_alpha"] is not None:
        left.axvline(result["chosen_alpha"], color="gray", linestyle="--")
        left.set_title(f"α sweep: chosen α = {result['chosen_alpha']:g}")
    else:
        left.set_title("α sweep: no α within the quality budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_sweep(result: dict[str, Any], console: Console) -> None:
    measure = result.get("quality_metric", "quality")
    table = Table(title=f"α sweep (target {result['target']}, {measure} budget {result['quality_budget']:.0%})")
    for column in ("α", result["target"], measure, "chosen"):
        table.add_column(column, justify="right")
    base = result["baseline"]
    table.add_row("none", f"{base.get(result['target'], float('nan')):.3f}", f"{base[measure]:.2f}", "")
    for p in result["points"]:
        table.add_row(
            f"{p['alpha']:g}",
            f"{p.get(result['target'], float('nan')):.3f}",
            f"{p[measure]:.2f}",
            "✓" if p["alpha"] == result["chosen_alpha"] else "",
        )
    console.print(table)


def parse_sweep_config(argv: list[str] | None = None) -> SweepConfig:
    """The :class:`SweepConfig` of ``l2s sweep`` arguments (``--config FILE`` and/or ``--field value``)."""
    return parse_dataclass_config(SweepConfig, "l2s sweep", __doc__, argv)


def sweep_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s sweep``."""
    run_sweep(parse_sweep_config(argv))
    return 0
