"""PNG plots of evaluation results (matplotlib, Agg backend): metric vs α per method, per-group bars."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from l2s_lightning.evaluation.behaviour import CLASSES, RATE_KEYS
from l2s_lightning.evaluation.report import GROUPS, TITLES, summary_metrics

ALPHA_METRICS = {
    "mm_safetybench": ["ed_score", "quality", "coherent_quality", "degenerate_share"],
    "jsonl": ["ed_score", "quality", "coherent_quality", "degenerate_share", "over_refusal_rate"],
    "pope": ["accuracy", "f1", "yes_ratio"],
    "chair": ["chair_s", "chair_i", "recall"],
}


def _alpha_metrics(benchmark: str, runs: list[dict]) -> list[str]:
    unsafe = [m for m in summary_metrics(benchmark, runs) if m.startswith("unsafe@")]
    present = {k for run in runs for k, v in run["summary"].items() if v is not None}
    return [m for m in unsafe + ALPHA_METRICS.get(benchmark, []) if m in present]


def plot_vs_alpha(benchmark: str, runs: list[dict], path: Path) -> Path | None:
    """One panel per metric; a line per method over its α values; runs without α as dashed levels. None (no
    plot) when no method has two α values: the plot would carry no information."""
    metrics = _alpha_metrics(benchmark, runs)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_method[run.get("series", run["method"])].append(run)
    swept = any(len({r["alpha"] for r in group if r["alpha"] is not None}) > 1 for group in by_method.values())
    if not metrics or not swept:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for index, (method, method_runs) in enumerate(by_method.items()):
            color = f"C{index % 10}"
            points = sorted((r["alpha"], r["summary"].get(metric)) for r in method_runs if r["alpha"] is not None)
            points = [(a, v) for a, v in points if v is not None]
            if points:
                ax.plot([a for a, _ in points], [v for _, v in points], marker="o", color=color, label=method)
            for r in method_runs:
                if r["alpha"] is None and r["summary"].get(metric) is not None:
                    ax.axhline(r["summary"][metric], linestyle="--", linewidth=1, color=color, label=f"{method} (no α)")
        ax.set_title(metric)
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{TITLES.get(benchmark, benchmark)}: metrics vs α")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups(benchmark: str, runs: list[dict], metric: str, path: Path) -> Path | None:
    """Grouped bars: one group per scenario / subset, one bar per run."""
    key = GROUPS.get(benchmark)
    if key is None:
        return None
    groups = sorted({g for run in runs for g, vals in (run.get(key) or {}).items() if vals.get(metric) is not None})
    if not groups:
        return None
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(groups) * max(1, len(runs)) ** 0.5 + 2), 3.8))
    for i, run in enumerate(runs):
        values = [((run.get(key) or {}).get(g) or {}).get(metric) for g in groups]
        # a group the run has no rows of gets no bar (a 0 bar would read as a perfect score)
        present = [(j, v) for j, v in enumerate(values) if v is not None]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j, _ in present]
        ax.bar(xs, [v for _, v in present], width=width, label=run["label"])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{TITLES.get(benchmark, benchmark)}: {metric} by {key.removeprefix('per_')}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CLASS_COLOURS = {"refuse": "C0", "defer": "C2", "comply": "C1", "degenerate": "C3"}


def plot_behaviour_classes(benchmark: str, runs: list[dict], path: Path) -> Path | None:
    """One panel per target behaviour (``per_behaviour``), one stacked bar per run: the shares of its answers
    that refuse, defer, comply or are degenerate."""
    behaviours = sorted({name for run in runs for name in run.get("per_behaviour") or {}})
    if not behaviours:
        return None
    fig, axes = plt.subplots(
        1, len(behaviours), figsize=(max(4.0, 0.45 * len(runs) + 1.5) * len(behaviours), 4.2), squeeze=False
    )
    for ax, behaviour in zip(axes[0], behaviours):
        groups = [(run.get("per_behaviour") or {}).get(behaviour) or {} for run in runs]
        bottom = [0.0] * len(runs)
        for cls in CLASSES:
            values = [group.get(RATE_KEYS[cls]) or 0.0 for group in groups]
            ax.bar(range(len(runs)), values, bottom=bottom, color=CLASS_COLOURS[cls], label=cls, width=0.7)
            bottom = [b + v for b, v in zip(bottom, values)]
        counts = [group.get("n", 0) for group in groups]
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([run["label"] for run in runs], rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1.0)
        ax.set_title(f"target: {behaviour} (n={max(counts) if counts else 0})")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes[0][0].set_ylabel("share of answers")
    fig.suptitle(f"{TITLES.get(benchmark, benchmark)}: answer classes by target behaviour")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """All plots of the results into ``out_dir``: ``<benchmark>_vs_alpha.png``,
    ``<benchmark>_<metric>_by_group.png``, ``<benchmark>_classes_by_behaviour.png``."""
    written: list[Path] = []
    for benchmark, block in results["benchmarks"].items():
        runs = block["runs"]
        path = plot_vs_alpha(benchmark, runs, out_dir / f"{benchmark}_vs_alpha.png")
        if path:
            written.append(path)
        path = plot_behaviour_classes(benchmark, runs, out_dir / f"{benchmark}_classes_by_behaviour.png")
        if path:
            written.append(path)
        metrics = [m for m in summary_metrics(benchmark, runs) if m.startswith("unsafe@")][:1]
        metrics += {
            "mm_safetybench": ["ed_score", "degenerate_share"],
            "jsonl": ["ed_score", "degenerate_share"],
            "pope": ["f1"],
        }.get(benchmark, [])
        for metric in metrics:
            safe = metric.replace("@", "_at_")
            path = plot_groups(benchmark, runs, metric, out_dir / f"{benchmark}_{safe}_by_group.png")
            if path:
                written.append(path)
    return written
