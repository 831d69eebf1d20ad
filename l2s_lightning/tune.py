"""`l2s tune`: choose L*, L', α and the steered positions of a run on a validation split, never the test split.

1. **Split**: the run's train/test split (the same seeded split ``l2s run`` makes), with
   ``validation_per_category`` training questions of each category moved to a validation part (``split.json``).
2. **Features**: one extraction per candidate layer L (L* = L' = L) of the training and validation rows
   (``features/layer<L>.h5``); any pair (L', L*) joins h of one file to z of another by sample id.
3. **Signals** of every pair with L' <= L* (:mod:`l2s_lightning.tuning.signals`): a behaviour probe on h, the
   held-out cosine of a ridge map h -> z; the best pair of each L*, for the ``top_pairs`` best, go on.
4. **Generations**: for each of those pairs the steerer is fitted (``pairs/<pair>/``), then short greedy answers
   to the validation questions are generated at each relative strength (α = strength · ‖h_L*‖ / ‖z_L*‖), each
   positions mode and each ``steer_tokens``, plus one unsteered run, and classed (refuse / defer / comply /
   degenerate) by ``l2s evaluate``'s rules.
5. **Choice** (:mod:`l2s_lightning.tuning.select`): the highest behaviour score within the degeneration and
   benign-answer budgets (none within them: the one that exceeds them least, flagged).

Writes ``search.json``, ``search.md``, ``search.png`` and ``tuned_run.yaml``: the run config with the chosen
setting as overrides (``l2s run --config <out_dir>/tuned_run.yaml``). Every step resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from l2s_lightning.config import config_record, parse_dataclass_config
from l2s_lightning.data.split import carve_validation, make_split, save_split
from l2s_lightning.errors import L2SInputError
from l2s_lightning.evaluation.config import resolve_eval_config
from l2s_lightning.evaluation.evaluate import evaluate_predictions
from l2s_lightning.features import FeatureFile, write_features
from l2s_lightning.methods import METHOD_REGISTRY, STEERER_METHODS, MethodName
from l2s_lightning.models.layers import check_layer_range, text_config
from l2s_lightning.models.loading import ModelCache, load_config
from l2s_lightning.pipeline import RunConfig, StageConfigs, stage_configs
from l2s_lightning.stages import extract, fit, predict
from l2s_lightning.stages.checks import data_rows
from l2s_lightning.stages.common import PromptDataSettings
from l2s_lightning.steering.hook import POSITIONS, Positions
from l2s_lightning.tuning.select import Budgets, choose
from l2s_lightning.tuning.signals import PairSignals, pair_signals


@dataclass
class TuneConfig:
    """What ``l2s tune`` does.

    Args:
        run_config: the ``l2s run`` YAML to tune (its stage configs, overrides, evaluation and lengths); the
            tuned copy is written as ``<out_dir>/tuned_run.yaml``.
        out_dir: split, features, steerers, predictions, the search table and plot.
        train_per_category: training rows per category (None: the run's ``limit_per_category`` train value).
        validation_per_category: training questions of each category held out for the generations: a number,
            or numbers per category name with a ``default`` (e.g. more of a behaviour's only category).
        layers: candidate L* (and L') values.
        context_layers: candidate L' values (None: ``layers``); only pairs with L' <= L* are tried.
        top_pairs: pairs (by the signals' score, one per L*) that get a steerer and generations.
        strengths: relative steering strengths ‖α z‖ / ‖h_L*‖ to try (α follows per pair).
        positions: positions modes to try (``steering.hook.POSITIONS``).
        steer_tokens: numbers of generated tokens steered to try (None: all).
        method: the steering method tuned (a steerer method: ``l2s``, ``mean``, ...).
        max_new_tokens: length of the validation answers.
        max_degenerate: budget: the largest share of degenerate answers.
        min_answer_ratio: budget: coherent answers to benign questions, at least this share of the unsteered rate.
        min_success: budget: a floor on the validation success rate of each behaviour named (e.g.
            ``{consult_expert: 0.4}``); none within every budget: the setting closest to them is chosen, flagged.
    """

    run_config: str = "configs/run/smollm2_quick.yaml"
    out_dir: str = "outputs/tune_smollm2"
    train_per_category: int | None = None
    validation_per_category: int | dict[str, int] = 3
    layers: list[int] = field(default_factory=lambda: [9, 12, 15, 18])
    context_layers: list[int] | None = None
    top_pairs: int = 2
    strengths: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])
    positions: list[str] = field(default_factory=lambda: ["last_prompt_and_generated"])
    steer_tokens: list[int | None] = field(default_factory=lambda: [None])
    method: str = "l2s"
    max_new_tokens: int = 32
    max_degenerate: float = 0.1
    min_answer_ratio: float = 0.9
    min_success: dict[str, float] = field(default_factory=dict)


def check_tune_config(config: TuneConfig, num_layers: int, model: str) -> Budgets:
    """Refuse a bad search space before any work (one line naming the field); the budgets."""
    budgets = Budgets(config.max_degenerate, config.min_answer_ratio, dict(config.min_success))
    for name in ("layers", "strengths", "positions", "steer_tokens"):
        if not getattr(config, name):
            raise L2SInputError(f"l2s tune: {name} is empty")
    check_layer_range(num_layers, model, {f"layers[{i}]": layer for i, layer in enumerate(config.layers)})
    for i, layer in enumerate(config.context_layers or []):
        check_layer_range(num_layers, model, {f"context_layers[{i}]": layer})
    if not any(c <= s for c in config.context_layers or config.layers for s in config.layers):
        raise L2SInputError("l2s tune: no pair of context_layers and layers has L' <= L*")
    for value in config.strengths:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise L2SInputError(f"l2s tune: strengths must be positive numbers, got {value!r}")
    for mode in config.positions:
        if mode not in POSITIONS:
            raise L2SInputError(f"l2s tune: positions {mode!r} must be among {POSITIONS}")
    for tokens in config.steer_tokens:
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise L2SInputError(f"l2s tune: steer_tokens must be positive integers or null, got {tokens!r}")
    if config.method not in STEERER_METHODS:
        raise L2SInputError(f"l2s tune: method {config.method!r} must be a steerer method {STEERER_METHODS}")
    for name in ("top_pairs", "max_new_tokens"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise L2SInputError(f"l2s tune: {name}={value!r} must be a positive integer")
    return budgets


def check_floors(floors: dict[str, float], data: PromptDataSettings) -> None:
    """Each behaviour ``min_success`` names is a behaviour of the data (its templates' mapping of the categories)."""
    if not floors:
        return
    from l2s_lightning.templates import load_templates

    templates = load_templates(data.templates)
    behaviours = {templates.behaviour_of(c)[0] for c in set(data_rows(data)["category"])}
    for name in floors:
        if name not in behaviours:
            raise L2SInputError(f"l2s tune: min_success names {name!r}; the data's behaviours: {sorted(behaviours)}")


def validation_split(data: PromptDataSettings, path: Path, per_category: int | dict[str, int]) -> Path:
    """Write (once) the run's train/test split with ``per_category`` training ids of each category moved to
    validation."""
    if not path.is_file():
        rows = data_rows(data)
        ids, categories = list(rows["id"]), list(rows["category"])
        split = make_split(ids, categories, data.test_fraction, data.split_seed)
        carved = carve_validation(split, dict(zip(ids, categories)), per_category, data.split_seed)
        save_split(path, carved, data.test_fraction, data.split_seed)
    return path


def tune_data(data: PromptDataSettings, split_file: Path, splits: list[str], train: int | None) -> PromptDataSettings:
    """``data`` on the tuner's split, serving ``splits``, at most ``train`` training rows per category."""
    limit = {"train": train} if train is not None else None
    return replace(data, split_file=str(split_file), splits=splits, limit_per_category=limit)


def read_layer(path: Path) -> dict[str, np.ndarray]:
    """A layer's features in sample-id order: context, steer, behaviour, split, sample_id."""
    file = FeatureFile(path)
    order = np.argsort(file.sample_id.astype(str))
    arrays = file.read(order)
    return {
        "context": arrays["context"],
        "steer": arrays["steer"],
        "behaviour": file.behaviour[order].astype(str),
        "split": file.split[order].astype(str),
        "sample_id": file.sample_id[order].astype(str),
        "category": file.category[order].astype(str),
    }


def layer_pair_signals(layers: dict[int, dict[str, np.ndarray]], context_layer: int, steer_layer: int) -> PairSignals:
    """:func:`~l2s_lightning.tuning.signals.pair_signals` of a pair from the per-layer features."""
    h, z = layers[context_layer], layers[steer_layer]
    if not np.array_equal(h["sample_id"], z["sample_id"]):
        raise L2SInputError(f"features of layers {context_layer} and {steer_layer} hold different rows: delete them")
    train, val = h["split"] == "train", h["split"] == "validation"
    return pair_signals(
        context_layer,
        steer_layer,
        h["context"][train],
        z["steer"][train],
        h["behaviour"][train],
        h["context"][val],
        z["steer"][val],
        h["behaviour"][val],
        z["context"][train],
    )


def best_per_steer_layer(signals: list[PairSignals], count: int) -> list[PairSignals]:
    """The first ``count`` pairs of ``signals`` (best first) with distinct L*: the signals rank how well h predicts
    z, not how well a layer steers, so the generations try several steering layers."""
    chosen: dict[int, PairSignals] = {}
    for pair in signals:
        if len(chosen) == count:
            break
        chosen.setdefault(pair.layer_steer, pair)
    return list(chosen.values())


def write_pair_features(
    layers: dict[int, dict[str, np.ndarray]], steer_file: Path, context_layer: int, steer_layer: int, path: Path
) -> Path:
    """A features.h5 of h at L' and z at L* (from the per-layer features :func:`read_layer` gave), with the
    attributes of L*'s file ``steer_file``."""
    if path.is_file():
        return path
    h, z = layers[context_layer], layers[steer_layer]
    attrs = FeatureFile(steer_file).meta.to_attrs() | {"layer_context": context_layer}
    attrs = {k: v for k, v in attrs.items() if k not in ("splits", "num_rows")}
    tmp = path.with_name(path.name + ".tmp")
    columns = [z[name].tolist() for name in ("sample_id", "category", "behaviour", "split")]
    write_features(tmp, h["context"], z["steer"], *columns, **attrs)
    tmp.replace(path)
    return path


def _name(candidate: dict[str, Any]) -> str:
    tokens = candidate["steer_tokens"]
    return (
        f"C{candidate['layer_context']}_S{candidate['layer_steer']}_r{candidate['strength']:g}_"
        f"{candidate['positions']}_k{'all' if tokens is None else tokens}"
    )


def _metrics(path: Path, eval_config: Any) -> dict[str, Any]:
    """The summary and per-behaviour metrics of one prediction file (one run), classed by ``l2s evaluate``'s rules."""
    results = evaluate_predictions([path], config=eval_config)
    run = next(iter(results["benchmarks"].values()))["runs"][0]
    summary = {k: v for k, v in run["summary"].items() if isinstance(v, (int, float)) or v is None}
    success = {name: group.get("success_rate") for name, group in run.get("per_behaviour", {}).items()}
    return summary | {"success": success}


def run_tune(config: TuneConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the search (module docstring) and return its result (also written to ``out_dir``)."""
    console = console or Console()
    run_config = parse_dataclass_config(RunConfig, "l2s run", None, ["--config", config.run_config])
    stages: StageConfigs = stage_configs(run_config)  # every stage YAML read (and checked) before any work
    spec = stages.extract.model.model
    num_layers = int(text_config(load_config(spec)).num_hidden_layers)
    budgets = check_tune_config(config, num_layers, spec.display_name)
    eval_config = resolve_eval_config(run_config.evaluate_config, run_config.judge, where="l2s tune")
    out = Path(config.out_dir)
    train_limit = config.train_per_category
    if train_limit is None and run_config.limit_per_category:
        train_limit = run_config.limit_per_category.get("train")
    check_floors(config.min_success, stages.extract.data)
    split_file = validation_split(stages.extract.data, out / "split.json", config.validation_per_category)
    started = time.time()

    console.rule("[bold]tune 1/3: features per layer")
    context_layers = config.context_layers or config.layers
    layer_files: dict[int, Path] = {}
    for layer in sorted(set(config.layers) | set(context_layers)):
        layer_files[layer] = out / "features" / f"layer{layer}.h5"
        extract.run(
            replace(
                stages.extract,
                model=replace(stages.extract.model, layer_steer=layer, layer_context=layer),
                data=tune_data(stages.extract.data, split_file, ["train", "validation"], train_limit),
                writer=replace(stages.extract.writer, output=str(layer_files[layer])),
            )
        )
    layers = {layer: read_layer(path) for layer, path in layer_files.items()}
    signals = sorted(
        (layer_pair_signals(layers, c, s) for c in context_layers for s in config.layers if c <= s),
        key=lambda p: (-p.score, p.layer_steer, p.layer_context),
    )
    chosen_pairs = best_per_steer_layer(signals, config.top_pairs)

    console.rule("[bold]tune 2/3: steerers and validation answers")
    predict_base = replace(
        stages.predict,
        model=replace(stages.predict.model, max_new_tokens=config.max_new_tokens),
        data=tune_data(stages.predict.data, split_file, ["validation"], None),
    )
    models = ModelCache()
    baseline_file = predict.run(
        replace(
            predict_base,
            model=replace(predict_base.model, method="none", steerer=None),
            writer=replace(predict_base.writer, output=str(out / "predictions" / "none.jsonl")),
        ),
        models=models,
    )
    candidates: list[dict[str, Any]] = []
    for pair in chosen_pairs:
        pair_dir = out / "pairs" / f"C{pair.layer_context}_S{pair.layer_steer}"
        features = write_pair_features(
            layers, layer_files[pair.layer_steer], pair.layer_context, pair.layer_steer, pair_dir / "features.h5"
        )
        fit.run(
            replace(
                stages.fit,
                method=cast(Any, config.method),
                out_dir=str(pair_dir),
                data=replace(
                    stages.fit.data,
                    features=str(features),
                    layer_steer=pair.layer_steer,
                    layer_context=pair.layer_context,
                    test_split="validation",
                ),
            )
        )
        for strength in config.strengths:
            for mode in config.positions:
                for tokens in config.steer_tokens:
                    candidate: dict[str, Any] = {
                        "layer_context": pair.layer_context,
                        "layer_steer": pair.layer_steer,
                        "strength": float(strength),
                        "alpha": float(strength) * pair.strength_scale,
                        "positions": mode,
                        "steer_tokens": tokens,
                    }
                    model = replace(
                        predict_base.model,
                        method=cast(MethodName, config.method),
                        steerer=str(pair_dir / "steerers" / config.method),
                        alpha=candidate["alpha"],
                        positions=cast(Positions, mode),
                        steer_tokens=tokens,
                    )
                    output = out / "predictions" / f"{_name(candidate)}.jsonl"
                    predict.run(
                        replace(predict_base, model=model, writer=replace(predict_base.writer, output=str(output))),
                        models=models,
                    )
                    candidate["predictions"] = str(output)
                    candidates.append(candidate)
    models.clear()

    console.rule("[bold]tune 3/3: choice")
    baseline = _metrics(baseline_file, eval_config)
    for candidate in candidates:
        candidate |= _metrics(Path(candidate["predictions"]), eval_config)
    choice = choose(candidates, baseline, budgets)
    result = {
        "config": config_record(config),
        "budgets": asdict(budgets),
        "signals": [p.as_row() for p in signals],
        "baseline": baseline,
        "candidates": candidates,
        "chosen": choice.candidate,
        "within_budget": choice.within_budget,
        "improves": choice.improves,
        "seconds": time.time() - started,
    }
    (out / "search.json").write_text(json.dumps(result, indent=1))
    (out / "search.md").write_text(search_markdown(result))
    plot_search(result, out / "search.png")
    write_tuned_run(config.run_config, run_config, choice.candidate, out / "tuned_run.yaml", config.method)
    print_search(result, console)
    return result


def tuned_overrides(chosen: dict[str, Any], method: str = "l2s") -> dict[str, Any]:
    """The run settings that apply a chosen candidate of ``method``: layers and positions as overrides; the α as
    the steerers' ``default_alpha`` for ``l2s``, as the run's per-method ``alpha`` for another method."""
    layers = {"layer_steer": chosen["layer_steer"], "layer_context": chosen["layer_context"]}
    alpha = round(chosen["alpha"], 4)
    fit_overrides = {f"data.{k}": v for k, v in layers.items()} | ({"default_alpha": alpha} if method == "l2s" else {})
    settings: dict[str, Any] = {
        "extract_overrides": {f"model.{k}": v for k, v in layers.items()},
        "fit_overrides": fit_overrides,
        "predict_overrides": {"model.positions": chosen["positions"], "model.steer_tokens": chosen["steer_tokens"]},
    }
    return settings if method == "l2s" else settings | {"alpha": {method: alpha}}


def write_tuned_run(
    source: str, run_config: RunConfig, chosen: dict[str, Any], path: Path, method: str = "l2s"
) -> Path:
    """``run_config`` with the chosen setting merged into its overrides and α (the tuner's keys win), as a run
    YAML."""
    values = config_record(run_config)
    for key, setting in tuned_overrides(chosen, method).items():
        if key == "alpha":
            before = values["alpha"]
            if isinstance(before, (int, float)):
                before = {m: before for m in run_config.methods if METHOD_REGISTRY[m].has_steerer}
            values["alpha"] = {**(before or {}), **setting}
        else:
            values[key] = {**values[key], **setting}
    values["out_dir"] = str(Path(run_config.out_dir).with_name(Path(run_config.out_dir).name + "_tuned"))
    header = f"# `l2s run` config: {source} with the setting `l2s tune` chose ({path.parent / 'search.md'})\n"
    path.write_text(header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
    return path


COLUMNS = ("behaviour_score", "degenerate_share", "coherent_answer_rate")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def search_markdown(result: dict[str, Any]) -> str:
    """The signals table and the candidates table (the chosen one marked)."""
    lines = ["## Layer pairs (signals on the validation rows)", ""]
    lines += ["| L' | L* | probe accuracy | ridge cos | zero-target norm ratio | score |", "|---|---|---|---|---|---|"]
    for p in result["signals"]:
        lines.append(
            f"| {p['layer_context']} | {p['layer_steer']} | {p['probe_accuracy']:.3f} | {p['ridge_cos']:.3f} | "
            f"{_fmt(p['zero_norm_ratio'])} | {p['score']:.3f} |"
        )
    behaviours = sorted(result["baseline"]["success"])
    header = ["L'", "L*", "strength", "α", "positions", "steer_tokens", *COLUMNS, *behaviours, "chosen"]
    lines += ["", "## Validation answers", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    base = result["baseline"]
    lines.append(
        "| none | | | 0 | | | "
        + " | ".join(_fmt(base.get(c)) for c in COLUMNS)
        + " | "
        + " | ".join(_fmt(base["success"].get(b)) for b in behaviours)
        + " | |"
    )
    for c in result["candidates"]:
        cells = [c["layer_context"], c["layer_steer"], f"{c['strength']:g}", f"{c['alpha']:.3g}", c["positions"]]
        cells += [c["steer_tokens"] or "all", *(c.get(k) for k in COLUMNS), *(c["success"].get(b) for b in behaviours)]
        cells.append("✓" if c is result["chosen"] or c == result["chosen"] else "")
        lines.append("| " + " | ".join(_fmt(x) for x in cells) + " |")
    verdict = "within the budgets" if result["within_budget"] else "NOT within the budgets (the least excess)"
    better = "beats" if result["improves"] else "does not beat"
    lines += ["", f"Chosen: {_name(result['chosen'])}, {verdict}; it {better} no steering on the behaviour score."]
    return "\n".join(lines) + "\n"


def plot_search(result: dict[str, Any], path: Path) -> None:
    """Behaviour score and degenerate share against strength, one line per pair and positions setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[str, list[dict[str, Any]]] = {}
    for c in result["candidates"]:
        label = f"L'={c['layer_context']} L*={c['layer_steer']} {c['positions']} k={c['steer_tokens'] or 'all'}"
        series.setdefault(label, []).append(c)
    for label, points in series.items():
        points = sorted(points, key=lambda c: c["strength"])
        xs = [c["strength"] for c in points]
        left.plot(xs, [c["behaviour_score"] for c in points], "o-", label=label)
        right.plot(xs, [c["degenerate_share"] for c in points], "o-", label=label)
    left.axhline(result["baseline"]["behaviour_score"], color="gray", linestyle=":", label="no steering")
    right.axhline(result["budgets"]["max_degenerate"], color="tab:red", linestyle=":", label="budget")
    chosen = result["chosen"]
    left.plot([chosen["strength"]], [chosen["behaviour_score"]], "k*", markersize=14, label="chosen")
    left.set(xlabel="strength ‖αz‖/‖h‖", ylabel="behaviour score (validation)", title="target behaviour")
    right.set(xlabel="strength ‖αz‖/‖h‖", ylabel="degenerate share", title="degeneration")
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_search(result: dict[str, Any], console: Console) -> None:
    table = Table(title="l2s tune: validation answers")
    for column in ("setting", *COLUMNS, "chosen"):
        table.add_column(column, justify="right" if column != "setting" else "left")
    table.add_row("none", *(_fmt(result["baseline"].get(c)) for c in COLUMNS), "")
    for c in result["candidates"]:
        table.add_row(_name(c), *(_fmt(c.get(k)) for k in COLUMNS), "✓" if c == result["chosen"] else "")
    console.print(table)
    verdict = "within budget" if result["within_budget"] else "no setting within budget: least excess shown"
    console.print(f"chosen: {_name(result['chosen'])} ({verdict}); tuned run config: {result['config']['out_dir']}")


def parse_tune_config(argv: list[str] | None = None) -> TuneConfig:
    """The :class:`TuneConfig` of ``l2s tune`` arguments (``--config FILE`` and/or ``--field value``)."""
    return parse_dataclass_config(TuneConfig, "l2s tune", __doc__, argv)


def tune_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s tune``."""
    run_tune(parse_tune_config(argv))
    return 0
