"""`l2s sweep`: predict and evaluate a steerer over a grid of α, and choose α automatically.

The chosen α optimises the target metric (e.g. ``unsafe@0.5`` lower, ``ed_score`` higher) among the α
whose response quality stays within ``quality_budget`` (relative drop) of no steering. The curve is saved
as a PNG and JSON, and the choice is written into the steerer's JSON (``default_alpha`` and ``sweep``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from l2s_lightning.cli import parse_dataclass_config
from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.config import resolve_eval_config

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
        update_steerer: write the chosen α into the steerer folder.
        extra_predict_args: more ``l2s predict`` overrides (e.g. ``--model.positions=all``).
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
    extra_predict_args: list[str] = field(default_factory=list)


def lower_is_better(metric: str) -> bool:
    return metric.startswith(LOWER_IS_BETTER)


def choose_alpha(points: list[dict[str, Any]], baseline_quality: float, target: str, budget: float) -> dict[str, Any]:
    """The best point by ``target`` whose quality >= (1 - budget) * baseline; the smallest α on ties."""
    floor = (1.0 - budget) * baseline_quality
    allowed = [p for p in points if p.get(target) is not None and p["quality"] is not None and p["quality"] >= floor]
    if not allowed:
        raise L2SInputError(
            f"no α in {[p['alpha'] for p in points]} keeps quality within {budget:.0%} of no steering "
            f"({baseline_quality:.2f}); try smaller α"
        )
    sign = 1.0 if lower_is_better(target) else -1.0
    return min(allowed, key=lambda p: (sign * p[target], p["alpha"]))


def run_sweep(config: SweepConfig, console: Console | None = None) -> dict[str, Any]:
    from l2s_lightning.evaluation import evaluate_predictions
    from l2s_lightning.generation.cli import predict_main
    from l2s_lightning.models.loading import ModelCache
    from l2s_lightning.steerer import Steerer

    console = console or Console()
    eval_config = resolve_eval_config(config.evaluate_config, config.judge, where="l2s sweep")
    if not eval_config.safety.quality:
        raise L2SInputError(
            "l2s sweep: the quality budget needs quality ratings; set safety.quality: true in evaluate_config"
        )
    if eval_config.safety.names_categories:
        from l2s_lightning.pipeline import check_safety_categories, predict_rows

        rows = predict_rows(config.predict_config, config.extra_predict_args)
        if rows is not None:
            check_safety_categories(eval_config, rows, "l2s sweep")
    steerer = Steerer.load(config.steerer)
    out = Path(config.out_dir) if config.out_dir else Path(config.steerer) / "sweep"
    common = ["--config", config.predict_config, "--trainer.enable_progress_bar=false"]
    if config.split_file:
        common.append(f"--data.split_file={config.split_file}")
    if config.limit_per_category:
        common.append(f"--data.limit_per_category={json.dumps(config.limit_per_category)}")
    if config.max_new_tokens:
        common.append(f"--model.max_new_tokens={config.max_new_tokens}")
    common += config.extra_predict_args
    files = [out / "none.jsonl"]
    models = ModelCache()  # one model loaded for every α
    # no steerer, whatever the predict config names (the paper configs name theirs)
    predict_main([*common, "--model.method=none", "--model.steerer=null", f"--writer.output={files[0]}"], models=models)
    for alpha in config.alphas:
        path = out / f"{steerer.method}_alpha{alpha:g}.jsonl"
        predict_main(
            [
                *common,
                f"--model.method={steerer.method}",
                f"--model.steerer={config.steerer}",
                f"--model.alpha={alpha}",
                f"--writer.output={path}",
            ],
            models=models,
        )
        files.append(path)
    models.clear()  # before the judge loads
    metrics = evaluate_predictions([str(f) for f in files], out_dir=out / "eval", config=eval_config)
    runs = next(iter(metrics["benchmarks"].values()))["runs"]
    baseline = next(r for r in runs if r["method"] == "none")["summary"]
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
            choose_alpha(points, baseline["quality"], config.target, config.quality_budget)["alpha"],
            None,
        )
    except ValueError as err:  # no α within the budget: the curve is still written and shown, then the error
        chosen_alpha, failure = None, err
    result = {
        "target": config.target,
        "quality_budget": config.quality_budget,
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
    right.plot(alphas, [p["quality"] for p in result["points"]], "s--", color="tab:blue", label="quality")
    floor = (1 - result["quality_budget"]) * result["baseline"]["quality"]
    right.axhline(floor, color="tab:blue", alpha=0.4, linestyle=":", label="quality budget")
    right.set_ylabel("quality", color="tab:blue")
    if result["chosen_alpha"] is not None:
        left.axvline(result["chosen_alpha"], color="gray", linestyle="--")
        left.set_title(f"α sweep: chosen α = {result['chosen_alpha']:g}")
    else:
        left.set_title("α sweep: no α within the quality budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_sweep(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"α sweep (target {result['target']}, quality budget {result['quality_budget']:.0%})")
    for column in ("α", result["target"], "quality", "chosen"):
        table.add_column(column, justify="right")
    base = result["baseline"]
    table.add_row("none", f"{base.get(result['target'], float('nan')):.3f}", f"{base['quality']:.2f}", "")
    for p in result["points"]:
        table.add_row(
            f"{p['alpha']:g}",
            f"{p.get(result['target'], float('nan')):.3f}",
            f"{p['quality']:.2f}",
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
