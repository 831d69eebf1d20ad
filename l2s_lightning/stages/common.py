"""What the stages share: the prompt data settings, seeding, and the Trainer of the writer stages."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from l2s_lightning.data.sources import PromptSource
from l2s_lightning.errors import Terminated

WRITER_TRAINER_DEFAULTS: dict[str, Any] = {"logger": False, "enable_checkpointing": False}
"""Trainer settings of ``l2s extract`` / ``l2s predict`` that differ from Lightning's (no logs, no checkpoints)."""


@dataclass
class PromptDataSettings:
    """The arguments of :class:`~l2s_lightning.data.datamodule.PromptDataModule` (same names, types and defaults;
    ``tests/test_stages.py`` keeps them equal)."""

    source: PromptSource
    templates: str = "safety"
    split_file: str = "outputs/split.json"
    test_fraction: float = 0.2
    split_seed: int = 21
    splits: list[str] | None = None
    limit_per_category: int | dict[str, int] | None = None
    categories: list[str] | None = None
    use_images: bool = True
    sort_by_length: bool = True
    batch_size: int | Literal["auto"] = 8
    num_workers: int = 0
    typo_font_size: int = 90
    long_questions: Literal["refuse", "truncate"] = "refuse"


def seed_run(seed: int | bool) -> int:
    """Seed every generator as the LightningCLI does before it builds the classes (``True``: a random seed,
    ``False``: none); returns the seed (0 for none)."""
    if seed is False:
        return 0
    from lightning.fabric.utilities.seed import seed_everything

    return seed_everything(None if seed is True else int(seed), workers=True)


def as_list(value: Any) -> list[Any]:
    """A Trainer's ``callbacks`` / ``logger`` value as a list (None: empty)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class StopOnSigterm(Callback):
    """Ends prediction after the batch in flight (its rows written) once the process got SIGTERM; Lightning's
    own handler notes the signal, and its fit loop already stops on it."""

    def on_predict_batch_end(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException


@contextlib.contextmanager
def sigterm_as_terminated(message: str | Callable[[], str]) -> Iterator[None]:
    """Turn Lightning's SIGTERM stop (a ``SystemExit`` with status 0) into :class:`Terminated` with ``message``
    (or what ``message()`` says at that point)."""
    try:
        yield
    except SIGTERMException:
        raise Terminated(message if isinstance(message, str) else message()) from None


PROGRESS_LABELS = {"HDF5FeatureWriter": "Extracting", "JsonlPredictionWriter": "Generating"}
"""The progress bar's label by writer class (Lightning's own: "Predicting")."""


class LabelledProgressBar(RichProgressBar):
    """Lightning's Rich progress bar, its predict bar labelled ``label`` (on Lightning's console: its
    ``console_kwargs`` would reconfigure Rich's global console, that the fit's model summary prints to)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    @property
    def predict_description(self) -> str:
        return self.label


def writer_trainer(settings: Mapping[str, Any], writer: Any, label: str | None = None):
    """The Trainer of ``l2s extract`` / ``l2s predict``: ``settings`` over :data:`WRITER_TRAINER_DEFAULTS`, the
    writer after the configured callbacks, a SIGTERM stop after it, then a Rich progress bar labelled ``label``
    (None: as :data:`PROGRESS_LABELS` says for the writer) unless ``enable_progress_bar`` is false."""
    from lightning.pytorch import Trainer

    kwargs = {**WRITER_TRAINER_DEFAULTS, **settings}
    callbacks = [*as_list(kwargs.get("callbacks")), writer, StopOnSigterm()]
    if kwargs.get("enable_progress_bar", True) is not False:
        label = label or PROGRESS_LABELS.get(type(writer).__name__, "Predicting")
        callbacks.append(LabelledProgressBar(label))
    return Trainer(**{**kwargs, "callbacks": callbacks})
