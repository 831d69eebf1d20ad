"""`PromptDataModule`: prompt rows with their resolved contrast, split and image, for extraction and generation."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import heapq
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from l2s_lightning.data.batch_plan import BatchPlan, PromptEncoding, filled_length, plan_batches
from l2s_lightning.data.images import TYPO_FONT, check_image, load_image, render_typo_image, typo_image_size
from l2s_lightning.data.items import PromptItem
from l2s_lightning.data.sources import PromptSource
from l2s_lightning.data.split import SPLITS, load_or_make_split
from l2s_lightning.errors import L2SInputError
from l2s_lightning.templates import TemplateSet, load_templates

WIDEST_CANDIDATES = 4  # rows encoded per kind (longest text, largest image) to find a run's widest item


class _Items(Dataset):
    """The rows as items; with ``length`` above the row count, the last row is repeated as filler items."""

    def __init__(
        self, rows: list[dict[str, Any]], use_images: bool, typo_kwargs: dict[str, Any], length: int | None = None
    ) -> None:
        self.rows = rows
        self.use_images = use_images
        self.typo_kwargs = typo_kwargs
        self.length = len(rows) if length is None else max(length, len(rows))

    def __len__(self) -> int:
        return self.length if self.rows else 0

    def __getitem__(self, index: int) -> PromptItem:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of {len(self)}")
        if index >= len(self.rows):
            return dataclasses.replace(self[len(self.rows) - 1], filler=True)
        row = dict(self.rows[index])
        key_phrase = row.pop("key_phrase", "")
        image = None
        if self.use_images and row["image_path"]:
            image = load_image(row["image_path"], row["id"])
        elif self.use_images and key_phrase:
            image = render_typo_image(key_phrase, **self.typo_kwargs)
        return PromptItem(**row, image=image)


def collate_items(items: list[PromptItem]) -> list[PromptItem]:
    """Batches stay lists of items (for modules that encode them themselves, such as generation)."""
    return items


def source_for_images(source: Any, use_images: bool) -> Any:
    """``source`` as a run with or without images reads it: for a text-only run (``use_images`` False) a copy
    that reads the questions needing no image (the caller's source stays as it is)."""
    if use_images or getattr(source, "use_images", None) is not True:
        return source
    source = copy.copy(source)
    object.__setattr__(source, "use_images", False)  # a frozen dataclass too
    return source


class PromptDataModule(L.LightningDataModule):
    """Rows of a dataset source with their contrast (T+, T-) resolved from a template set.

    Args:
        source: a :class:`PromptSource` (MM-SafetyBench folder, POPE files, generic JSONL).
        templates: template set name (``l2s_lightning/resources/templates/<name>.yaml``) or YAML path.
        split_file: where the seeded train/test split is saved (reused when present).
        test_fraction, split_seed: the split's parameters.
        splits: which splits to serve (``["train", "test"]`` for extraction of both).
        limit_per_category: keep only the first N rows of each category and split (quick runs); a mapping
            such as ``{train: 40, test: 8}`` gives each split its own N.
        use_images: False for text-only models (no image is loaded or rendered; a source with a
            ``use_images`` of its own, MM-SafetyBench's, is set to False too).
        sort_by_length: order rows by question length so batches carry little padding.
        batch_size: rows per batch, or ``auto``: the LightningModule's ``auto_batch_size`` chooses it for the
            run's widest row (:meth:`widest_candidates`) from free accelerator memory once the model is on its device.

    The LightningModule, when it is a :class:`~l2s_lightning.data.batch_plan.PromptEncoding` (extraction,
    generation), encodes the batches (its ``collate_fn()``), gets the template set's ``prompt_baseline`` and
    takes part in the run's :class:`~l2s_lightning.data.batch_plan.BatchPlan` (:meth:`predict_dataloader`),
    which it is handed too. One whose ``full_batches`` is True (compiled generation: one graph per batch
    size and cache size) gets every batch full: the last one is filled with copies of the last row, marked
    ``filler``, whose outputs the module drops; the plan holds its static cache size for the widest item,
    so that the cache is sized once for the run.
    """

    def __init__(
        self,
        source: PromptSource,
        templates: str = "safety",
        split_file: str = "outputs/split.json",
        test_fraction: float = 0.2,
        split_seed: int = 21,
        splits: list[str] | None = None,
        limit_per_category: int | dict[str, int] | None = None,
        categories: list[str] | None = None,
        use_images: bool = True,
        sort_by_length: bool = True,
        batch_size: int | Literal["auto"] = 8,
        num_workers: int = 0,
        typo_font_size: int = 90,
        long_questions: Literal["refuse", "truncate"] = "refuse",
    ) -> None:
        super().__init__()
        self.source = source_for_images(source, use_images)
        self.template_name = templates
        self.split_file = split_file
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.splits = list(splits or ["train", "test"])
        self.limit_per_category = limit_per_category
        self.categories = categories
        self.use_images = use_images
        self.sort_by_length = sort_by_length
        if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise L2SInputError(f"data.batch_size={batch_size!r} must be a whole number of at least 1, or 'auto'")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.typo_kwargs = {"font_size": typo_font_size}
        if long_questions not in ("refuse", "truncate"):
            raise L2SInputError(f"data.long_questions={long_questions!r} must be 'refuse' or 'truncate'")
        self.long_questions = long_questions
        self.exclude_ids: set[str] = set()
        self._rows: list[dict[str, Any]] | None = None
        self.source_sha256 = ""  # of every row the source holds (set when the rows are read)
        self._templates: TemplateSet | None = None
        self._pending: list[dict[str, Any]] = []
        self.batch_plan: BatchPlan | None = None  # the plan of the last predict_dataloader()

    @property
    def templates(self) -> TemplateSet:
        if self._templates is None:
            self._templates = load_templates(self.template_name)
        return self._templates

    def rows(self) -> list[dict[str, Any]]:
        """All selected rows (before excluding finished ids), validated: templates resolve, images exist."""
        if self._rows is None:
            self._rows = self._build_rows()
        return self._rows

    def _build_rows(self) -> list[dict[str, Any]]:
        for split in self.splits:
            if split not in SPLITS:
                raise L2SInputError(f"splits={self.splits}: each must be one of {SPLITS}")
        if isinstance(self.limit_per_category, dict) and set(self.limit_per_category) - set(SPLITS):
            raise L2SInputError(f"limit_per_category={self.limit_per_category}: its keys must be among {SPLITS}")
        data = self.source.load()
        self.source_sha256 = _rows_sha256(data)
        unknown = sorted(set(self.categories or ()) - set(data["category"]))
        if unknown:
            raise L2SInputError(
                f"categories {unknown} are not in {self.source.describe()} "
                f"(its categories: {sorted(set(data['category']))})"
            )
        split_of = load_or_make_split(
            self.split_file, data["id"], data["category"], self.test_fraction, self.split_seed
        )
        rows: list[dict[str, Any]] = []
        kept: dict[tuple[str, str], int] = {}
        for row in data:
            split = split_of[row["id"]]
            if split not in self.splits or (self.categories and row["category"] not in self.categories):
                continue
            key = (row["category"], split)
            limit = self.limit_per_category
            if isinstance(limit, dict):
                limit = limit.get(split)
            if limit is not None and kept.get(key, 0) >= limit:
                continue
            kept[key] = kept.get(key, 0) + 1
            contrast = self.templates.resolve(
                row["category"],
                sample_id=row["id"],
                behaviour=row["behaviour"] or None,
                positive=row["positive"] or None,
                negative=row["negative"] or None,
                fields=_label_fields(row["label"]),
            )
            if self.use_images and row["image"]:
                check_image(row["image"], row["id"])
            rows.append(
                {
                    "id": row["id"],
                    "question": row["question"],
                    "category": row["category"],
                    "behaviour": contrast.behaviour,
                    "positive": contrast.positive,
                    "negative": contrast.negative,
                    "suffix": contrast.suffix,
                    "close_turn": contrast.close_turn,
                    "instruction": contrast.instruction,
                    "split": split,
                    "benchmark": row["benchmark"],
                    "label": row["label"],
                    "image_path": row["image"] if self.use_images else "",
                    "key_phrase": row["key_phrase"] if self.use_images else "",
                }
            )
        if not rows:
            raise L2SInputError(
                f"empty dataset: no rows of {self.source.describe()} in splits {self.splits}"
                + (f" and categories {self.categories}" if self.categories else "")
            )
        self._check_image_mix(rows)
        if self.sort_by_length:
            rows.sort(key=lambda r: (len(r["question"]) + len(r["suffix"]), r["id"]))
        return rows

    def _check_image_mix(self, rows: list[dict[str, Any]]) -> None:
        """A batch cannot mix prompts with and without an image: refuse such data unless batches hold one row."""
        if self.batch_size == 1:
            return
        without = [row["id"] for row in rows if not (row["image_path"] or row["key_phrase"])]
        if without and len(without) < len(rows):
            raise L2SInputError(
                f"{self.source.describe()}: {len(rows) - len(without)} rows have an image and {len(without)} have "
                f"none (e.g. {without[:3]}); a batch cannot mix them: give every row an image, set "
                "data.use_images=false, set data.batch_size=1, or process them in separate runs"
            )

    def fit_questions(self, tokenizer: Any, max_tokens: int, context: int) -> None:
        """Make every question at most ``max_tokens`` tokens (of a ``context``-token window): refuse the first
        longer one, naming it, or cut each to size with a warning (``long_questions``)."""
        rows = self.rows()
        encoded = tokenizer([row["question"] for row in rows], add_special_tokens=False)["input_ids"]
        for row, ids in zip(rows, encoded):
            count = len(ids)
            if count <= max_tokens:
                continue
            if self.long_questions == "refuse":
                raise L2SInputError(
                    f"sample {row['id']!r}: its question is {count} tokens, more than the {max_tokens} the model's "
                    f"{context}-token context leaves for it; shorten it or set data.long_questions=truncate"
                )
            row["question"] = tokenizer.decode(ids[:max_tokens])
            warnings.warn(f"sample {row['id']!r}: question cut from {count} to {max_tokens} tokens", stacklevel=2)

    def exclude(self, ids: Iterable[str]) -> None:
        """Skip these ids (already written by an earlier, interrupted run)."""
        self.exclude_ids = set(ids)

    def pending_rows(self) -> list[dict[str, Any]]:
        return [row for row in self.rows() if row["id"] not in self.exclude_ids]

    def widest_candidates(self, dataset: _Items) -> Sequence[PromptItem]:
        """The items that may be widest, in row order: the ``WIDEST_CANDIDATES`` rows with the longest text
        and, with images, those with the largest images (Qwen2-VL-style processors give a large image more
        tokens)."""
        rows = dataset.rows
        text = [len(row["question"]) + len(row["suffix"]) for row in rows]
        candidates = set(heapq.nlargest(WIDEST_CANDIDATES, range(len(rows)), key=text.__getitem__))
        if self.use_images:
            areas = self._image_areas(rows)
            candidates |= set(heapq.nlargest(WIDEST_CANDIDATES, range(len(rows)), key=areas.__getitem__))
        return [dataset[i] for i in sorted(candidates)]

    def _image_areas(self, rows: list[dict[str, Any]]) -> list[int]:
        """Each row's image size in pixels, without decoding it: an image file's header (0 when it cannot be
        read: the loader reports that file), a TYPO render's size from its key phrase, 0 without an image."""
        by_path: dict[str, int] = {}
        areas = []
        for row in rows:
            path = row["image_path"]
            if path and path not in by_path:
                try:
                    with Image.open(path) as image:
                        by_path[path] = image.width * image.height
                except OSError:
                    by_path[path] = 0
            if path:
                areas.append(by_path[path])
            elif row["key_phrase"]:
                w, h = typo_image_size(row["key_phrase"], **self.typo_kwargs)
                areas.append(w * h)
            else:
                areas.append(0)
        return areas

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _filled_length(self, batch_size: int) -> int:
        """The pending row count rounded up to whole batches on every process (batch size × world size)."""
        return filled_length(len(self._pending), batch_size, self._world_size())

    def encoder(self) -> PromptEncoding | None:
        """The Trainer's LightningModule when it encodes prompt rows (a :class:`PromptEncoding`), else None."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        return module if isinstance(module, PromptEncoding) else None

    def collate_fn(self) -> Callable[[list[PromptItem]], Any]:
        """The encoder's ``collate_fn()`` (batches encoded in the loader's workers), else
        :func:`collate_items` (batches stay lists of rows)."""
        encoder = self.encoder()
        return encoder.collate_fn() if encoder is not None else collate_items

    def plan(self, dataset: _Items, encoder: PromptEncoding | None) -> BatchPlan:
        """The :class:`BatchPlan` of ``dataset``'s rows (see :func:`plan_batches`), on this run's processes."""
        return plan_batches(
            encoder, len(dataset.rows), self.batch_size, self._world_size(), lambda: self.widest_candidates(dataset)
        )

    def predict_dataloader(self) -> DataLoader:
        """The pending rows, batched by their :class:`BatchPlan`, which the encoder is handed first (after the
        template set's ``prompt_baseline``)."""
        self._pending = self.pending_rows()
        dataset = _Items(self._pending, self.use_images, self.typo_kwargs)
        encoder = self.encoder()
        if encoder is not None:
            encoder.use_data(self.templates.prompt_baseline, data_options(self))
        self.batch_plan = plan = self.plan(dataset, encoder)
        if encoder is not None:
            encoder.use_batch_plan(plan)
        if plan.fill_to is not None:
            dataset = _Items(self._pending, self.use_images, self.typo_kwargs, plan.fill_to)
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=plan.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn(),
            pin_memory=on_cuda,  # tensors of encoded batches in page-locked memory: asynchronous uploads
            persistent_workers=False,
        )


def _label_fields(label: str) -> dict[str, str]:
    """Template fields from a yes/no label: ``correct``/``wrong`` (capitalised) and lower-case variants."""
    if label not in {"yes", "no"}:
        return {}
    wrong = "no" if label == "yes" else "yes"
    return {"correct": label.capitalize(), "wrong": wrong.capitalize(), "correct_lower": label, "wrong_lower": wrong}


def data_options(datamodule: PromptDataModule) -> str:
    """JSON of the settings, besides the dataset itself, that change a sample's prompt or image (recorded in
    features.h5 and compared when a run resumes)."""
    options: dict[str, Any] = {**datamodule.source.options(), "use_images": datamodule.use_images}
    if datamodule.use_images:
        options["typo_font_size"] = datamodule.typo_kwargs["font_size"]
        options["typo_font"] = TYPO_FONT  # renders of another font or wrapping differ: not resumed into
    return json.dumps(options, sort_keys=True)


def describe_data(datamodule: PromptDataModule) -> str:
    """Text recorded in output files about where the rows came from."""
    source = datamodule.source
    root = getattr(source, "root", None) or getattr(source, "path", None) or getattr(source, "hf_dataset", None)
    return f"{source.describe()}:{Path(str(root)).name if root else ''}"


def _rows_sha256(data: Any) -> str:
    """sha256 of every row of a source's dataset (each column's values, in order; an image by its file name, so a
    moved data folder keeps its digest): another data file, or one whose rows changed, gives another digest even
    under the same file name."""
    lines = []
    for row in data:
        row = {**row, "image": Path(row["image"]).name if row.get("image") else ""}
        lines.append(json.dumps(row, sort_keys=True, default=str))
    digest = hashlib.sha256()
    for line in sorted(lines):  # the rows' order in the file does not matter
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()
