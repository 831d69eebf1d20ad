"""`BatchPlan`: how a predict run's rows are batched, worked out once and shared by data and model.

:class:`~l2s_lightning.data.datamodule.PromptDataModule` serves the rows; the LightningModule that encodes
them (:class:`PromptEncoding`: ``ExtractionModule``, ``SteeredGenerationModule``) knows how wide a row is,
what batch fits and whether batches must all be full. :func:`plan_batches` asks it once, from the run's
widest row, and the data module hands the resulting :class:`BatchPlan` back to the module
(:meth:`PromptEncoding.use_batch_plan`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from l2s_lightning.data.items import PromptItem

DEFAULT_BATCH_SIZE = 8  # ``batch_size: auto`` without a module to choose


@dataclass(frozen=True)
class BatchPlan:
    """The batching of one predict run.

    batch_size: rows per batch. rows: the pending rows. fill_to: the item count the rows are padded to with
    ``filler`` copies of the last row (whole batches on every rank, or a row for every rank); None: the rows
    as they are. widest_id / width: the widest row and its width in the module's tokens (None when not
    measured). static_cache_length: the KV cache the module sizes before the first batch (None: none).
    """

    batch_size: int
    rows: int
    fill_to: int | None = None
    widest_id: str | None = None
    width: int | None = None
    static_cache_length: int | None = None

    @property
    def items(self) -> int:
        """Items served: the rows plus any filler."""
        return self.rows if self.fill_to is None else max(self.fill_to, self.rows)


@runtime_checkable
class PromptEncoding(Protocol):
    """What a LightningModule that encodes :class:`PromptItem` rows tells the data module, and hears back."""

    @property
    def full_batches(self) -> bool:
        """Every batch must be full (the last one filled with ``filler`` rows)."""
        ...

    def collate_fn(self) -> Callable[[list[PromptItem]], Any]:
        """The DataLoader ``collate_fn`` (run in the loader's workers)."""
        ...

    def prompt_width(self, item: PromptItem) -> int:
        """``item``'s encoded width in tokens."""
        ...

    def auto_batch_size(self, widest: PromptItem) -> int:
        """The batch size that fits rows up to ``widest``'s width."""
        ...

    def static_cache_for(self, width: int) -> int | None:
        """The KV cache length sized before the first batch for rows up to ``width`` tokens; None: none."""
        ...

    def use_data(self, prompt_baseline: str, data_options: str) -> None:
        """The template set's ``prompt_baseline`` and the data options (given before any row is measured or
        encoded)."""
        ...

    def use_batch_plan(self, plan: BatchPlan) -> None:
        """The plan the run's batches follow."""
        ...


def text_width(item: PromptItem) -> int:
    """A row's width without an encoder: its question and template suffix in characters."""
    return len(item.question) + len(item.suffix)


def widest(items: Sequence[PromptItem], encoder: PromptEncoding | None) -> tuple[PromptItem, int]:
    """The widest of ``items`` (the first of equals) and its width: the encoder's ``prompt_width`` (each item
    encoded once), or :func:`text_width` without one."""
    measure = encoder.prompt_width if encoder is not None else text_width
    widths = [measure(item) for item in items]
    best = max(range(len(items)), key=widths.__getitem__)
    return items[best], widths[best]


def filled_length(rows: int, batch_size: int, world_size: int) -> int:
    """``rows`` rounded up to whole batches on every process (batch size × world size)."""
    step = batch_size * world_size
    return -(-rows // step) * step


def plan_batches(
    encoder: PromptEncoding | None,
    rows: int,
    batch_size: int | Literal["auto"],
    world_size: int,
    candidates: Callable[[], Sequence[PromptItem]],
) -> BatchPlan:
    """The plan of ``rows`` pending rows on ``world_size`` processes.

    ``candidates`` gives the rows that may be widest; it is called (and the widest measured) only when
    ``batch_size`` is ``auto`` or the encoder wants full batches. ``auto`` takes the encoder's
    ``auto_batch_size`` of the widest row (:data:`DEFAULT_BATCH_SIZE` without an encoder). Full batches fill
    the rows up to whole batches on every rank and size the encoder's static cache for the widest row;
    otherwise, with fewer rows than processes, every idle rank gets a filler row.
    """
    fill = encoder is not None and encoder.full_batches and rows > 0
    item, width = widest(candidates(), encoder) if rows > 0 and (batch_size == "auto" or fill) else (None, None)
    if batch_size != "auto":
        size = int(batch_size)
    elif encoder is not None and item is not None:
        size = encoder.auto_batch_size(item)
    else:
        size = DEFAULT_BATCH_SIZE
    fill_to, cache = None, None
    if fill:
        assert encoder is not None and width is not None
        fill_to = filled_length(rows, size, world_size)
        cache = encoder.static_cache_for(width)
    elif 0 < rows < world_size:  # every rank needs a row (else it never reaches the merge)
        fill_to = world_size
    return BatchPlan(
        batch_size=size,
        rows=rows,
        fill_to=fill_to,
        widest_id=item.id if item is not None else None,
        width=width if encoder is not None else None,
        static_cache_length=cache,
    )
