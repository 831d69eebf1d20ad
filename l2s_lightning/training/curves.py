"""`TrainingCurves`: a PNG of the per-epoch curves (train/val MSE, val cosine, lr) at the end of fit.

Reads every ``metrics.csv`` the CSV logger wrote under the run folder (one version per resumed run; a later
version overrides an earlier one's epochs), so a resumed run plots the whole history.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only


def read_epoch_metrics(csv_root: str | Path) -> dict[str, dict[int, float]]:
    """``{metric: {epoch: value}}`` from all ``metrics.csv`` files under ``csv_root`` (version order)."""

    def version_key(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name.split("_")[-1]) if name.split("_")[-1].isdigit() else -1, str(path))

    series: dict[str, dict[int, float]] = {}
    for path in sorted(Path(csv_root).rglob("metrics.csv"), key=version_key):
        with path.open(newline="") as file:
            for row in csv.DictReader(file):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                for key, value in row.items():
                    if key in ("epoch", "step") or value in ("", None) or key.endswith("_step"):
                        continue
                    series.setdefault(key.removesuffix("_epoch"), {})[epoch] = float(value)
    return series


def plot_curves(series: dict[str, dict[int, float]], output: str | Path, title: str = "L2S training") -> Path | None:
    """Save the curves as a PNG (matplotlib Agg); ``None`` when there is nothing to plot."""
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("MSE", ["train/mse", "val/mse"], True),
        ("cosine(g(h), z)", ["train/cos", "val/cos"], False),
        ("learning rate", ["lr"], True),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (label, keys, log) in zip(axes, panels):
        for key in keys:
            if key in series:
                epochs = sorted(series[key])
                ax.plot(epochs, [series[key][e] for e in epochs], label=key, marker="." if len(epochs) < 30 else None)
        if log and any(v > 0 for key in keys for v in series.get(key, {}).values()):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        if ax.has_data():
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


class TrainingCurves(L.Callback):
    """Writes ``<output>`` (default ``<run dir>/curves.png``) when fit ends."""

    def __init__(self, output: str | None = None) -> None:
        self.output = output
        self.path: Path | None = None

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        if not loggers:
            return
        for logger in loggers:
            logger.save()
        root = Path(loggers[0].root_dir)
        output = Path(self.output) if self.output else root.parent / "curves.png"
        self.path = plot_curves(read_epoch_metrics(root), output)
