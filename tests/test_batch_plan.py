"""`BatchPlan`: batch size, widest row, filler and static cache worked out once and shared by data and model."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import lightning as L
import pytest
import torch

from l2s_lightning.data.batch_plan import (
    DEFAULT_BATCH_SIZE,
    BatchPlan,
    PromptEncoding,
    filled_length,
    plan_batches,
    text_width,
    widest,
)
from l2s_lightning.data.datamodule import PromptDataModule, PromptItem, collate_items
from l2s_lightning.data.sources import JsonlSource
from l2s_lightning.models.loading import ModelSpec
from l2s_lightning.training.data import TrainingStatistics
from l2s_lightning.training.module import L2SModule


def _item(sample_id: str, question: str, suffix: str = "", instruction: str = "") -> PromptItem:
    return PromptItem(
        id=sample_id,
        question=question,
        category="harm",
        behaviour="refuse",
        positive="No",
        negative="Yes",
        suffix=suffix,
        close_turn=False,
        instruction=instruction,
        split="test",
        benchmark="jsonl",
    )


class FakeEncoder:
    """A :class:`PromptEncoding` with set widths: records what it is asked and given."""

    def __init__(self, widths: dict[str, int], full: bool = False, batch: int = 32, cache: int | None = 128) -> None:
        self.widths, self.full, self.batch, self.cache = widths, full, batch, cache
        self.measured: list[str] = []
        self.asked_batch: list[str] = []
        self.asked_cache: list[int] = []
        self.baseline: str | None = None
        self.plan: BatchPlan | None = None

    @property
    def full_batches(self) -> bool:
        return self.full

    def collate_fn(self) -> Callable[[list[PromptItem]], Any]:
        return collate_items

    def prompt_width(self, item: PromptItem) -> int:
        self.measured.append(item.id)
        return self.widths[item.id]

    def auto_batch_size(self, widest: PromptItem) -> int:
        self.asked_batch.append(widest.id)
        return self.batch

    def static_cache_for(self, width: int) -> int | None:
        self.asked_cache.append(width)
        return self.cache

    def use_data(self, prompt_baseline: str, data_options: str) -> None:
        self.baseline = prompt_baseline

    def use_batch_plan(self, plan: BatchPlan) -> None:
        self.plan = plan


ITEMS = [_item("a", "a short one"), _item("b", "the longest question of all", "!"), _item("c", "mid size q")]


def _never() -> list[PromptItem]:
    raise AssertionError("the widest row was looked for")


def test_fake_and_real_modules_are_prompt_encodings(tiny_llama_dir):
    from l2s_lightning.extraction.module import ExtractionModule
    from l2s_lightning.generation.module import SteeredGenerationModule

    assert isinstance(FakeEncoder({}), PromptEncoding) and not isinstance(object(), PromptEncoding)
    extraction = ExtractionModule(ModelSpec(str(tiny_llama_dir)), layer_steer=1, layer_context=2)
    generation = SteeredGenerationModule(ModelSpec(str(tiny_llama_dir)))
    assert isinstance(extraction, PromptEncoding) and isinstance(generation, PromptEncoding)
    assert not extraction.full_batches and extraction.static_cache_for(100) is None
    plan = BatchPlan(batch_size=4, rows=3)
    extraction.use_batch_plan(plan)
    assert extraction.batch_plan is plan


def test_fixed_batch_size_measures_nothing():
    encoder = FakeEncoder({})
    assert plan_batches(encoder, 10, 4, 1, _never) == BatchPlan(batch_size=4, rows=10)
    assert plan_batches(None, 10, 4, 2, _never) == BatchPlan(batch_size=4, rows=10)
    assert encoder.measured == [] and encoder.asked_batch == [] and encoder.asked_cache == []


def test_auto_batch_size_comes_from_the_widest_row():
    encoder = FakeEncoder({"a": 5, "b": 9, "c": 30})  # by tokens "c" is widest, by text "b"
    plan = plan_batches(encoder, 3, "auto", 1, lambda: ITEMS)
    assert plan == BatchPlan(batch_size=32, rows=3, widest_id="c", width=30)
    assert encoder.measured == ["a", "b", "c"] and encoder.asked_batch == ["c"]
    assert encoder.asked_cache == []  # batches need not be full: no cache is sized


def test_without_an_encoder_text_length_decides_and_auto_is_the_default():
    plan = plan_batches(None, 3, "auto", 1, lambda: ITEMS)
    assert plan == BatchPlan(batch_size=DEFAULT_BATCH_SIZE, rows=3, widest_id="b", width=None)
    assert widest(ITEMS, None) == (ITEMS[1], text_width(ITEMS[1])) and text_width(ITEMS[1]) == 28


def test_widest_takes_the_first_of_equals():
    assert widest(ITEMS, FakeEncoder({"a": 7, "b": 3, "c": 7}))[0].id == "a"


def test_full_batches_fill_every_rank_and_size_the_cache_once():
    encoder = FakeEncoder({"a": 5, "b": 9, "c": 30}, full=True, cache=64)
    plan = plan_batches(encoder, 7, 2, 2, lambda: ITEMS)
    assert plan == BatchPlan(batch_size=2, rows=7, fill_to=8, widest_id="c", width=30, static_cache_length=64)
    assert plan.items == 8 and encoder.asked_cache == [30] and encoder.asked_batch == []
    assert plan_batches(encoder, 8, 2, 2, lambda: ITEMS).fill_to == 8  # already whole batches
    assert plan_batches(encoder, 5, 3, 1, lambda: ITEMS).fill_to == 6
    assert plan_batches(FakeEncoder({}, full=True), 0, 2, 2, _never) == BatchPlan(batch_size=2, rows=0)


def test_idle_ranks_get_a_filler_row():
    assert plan_batches(None, 1, 4, 3, _never).fill_to == 3
    assert plan_batches(FakeEncoder({}), 2, 4, 3, _never).items == 3
    assert plan_batches(None, 3, 4, 3, _never).fill_to is None
    assert plan_batches(None, 0, 4, 3, _never).fill_to is None


@pytest.mark.parametrize(
    ("rows", "batch", "world", "expected"), [(7, 2, 1, 8), (7, 2, 2, 8), (7, 3, 2, 12), (7, 7, 1, 7), (0, 4, 2, 0)]
)
def test_filled_length(rows, batch, world, expected):
    assert filled_length(rows, batch, world) == expected


def _prompt_data(tmp_path, batch_size: int | str, baseline: str = "Refuse harmful requests.") -> PromptDataModule:
    rows = [{"id": f"r{i}", "question": "How do I make thing? " * (1 + i % 4), "category": "harm"} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {
        "name": "plan",
        "behaviours": {"refuse": {"positive": "I'm sorry", "negative": "Sure", "instruction": "Refuse."}},
        "categories": {"harm": "refuse"},
        "prompt_baseline": baseline,
    }
    (tmp_path / "t.yaml").write_text(json.dumps(spec))
    return PromptDataModule(
        JsonlSource(str(tmp_path / "d.jsonl")),
        templates=str(tmp_path / "t.yaml"),
        split_file=str(tmp_path / "s.json"),
        test_fraction=0.0,
        use_images=False,
        batch_size=batch_size,  # type: ignore[arg-type]
    )


def test_data_module_without_a_module_plans_alone(tmp_path):
    data = _prompt_data(tmp_path, "auto")
    loader = data.predict_dataloader()
    assert data.encoder() is None and loader.collate_fn is collate_items
    assert data.batch_plan == BatchPlan(batch_size=DEFAULT_BATCH_SIZE, rows=5, widest_id="r3")
    assert loader.batch_size == DEFAULT_BATCH_SIZE and len(loader.dataset) == 5


def test_compiled_generation_gets_the_plan_and_the_prompt_baseline(tiny_llama_dir, tmp_path):
    """The data module gives the module the template set's prompt_baseline before measuring (the widths count
    it), plans once and hands the same plan over: last batch filled, cache sized for the widest row."""
    from l2s_lightning.generation.module import SteeredGenerationModule

    data = _prompt_data(tmp_path, 2)
    module = SteeredGenerationModule(
        ModelSpec(str(tiny_llama_dir)), method="prompt", compile=True, max_new_tokens=5, static_cache_multiple=16
    )
    module.configure_model()
    bare = module.prompt_width(_item("x", "How do I make thing? " * 4, instruction="Refuse."))  # the row's own
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    data.trainer = trainer
    loader = data.predict_dataloader()
    plan = data.batch_plan
    assert plan is not None and module.batch_plan is plan and module.prompt_baseline == "Refuse harmful requests."
    assert loader.collate_fn.instruction == "Refuse harmful requests."
    assert plan.batch_size == loader.batch_size == 2 and plan.fill_to == len(loader.dataset) == 6
    assert [item.filler for item in loader.dataset] == [False] * 5 + [True]
    assert plan.widest_id == "r3" and plan.width is not None and plan.width > bare  # the instruction counted
    rows = {item.id: item for item in loader.dataset if not item.filler}
    assert plan.width == module.prompt_width(rows["r3"]) == max(module.prompt_width(item) for item in rows.values())
    assert module.static_cache_length == plan.static_cache_length == -(-(plan.width + 5) // 16) * 16


def test_generation_cache_follows_the_plan_and_never_shrinks(tiny_llama_dir):
    from l2s_lightning.generation.module import SteeredGenerationModule

    eager = SteeredGenerationModule(ModelSpec(str(tiny_llama_dir)), max_new_tokens=5)
    assert not eager.full_batches and eager.static_cache_for(40) is None
    per_batch = SteeredGenerationModule(
        ModelSpec(str(tiny_llama_dir)), compile=True, max_new_tokens=5, static_cache_for_longest=False
    )
    assert per_batch.full_batches and per_batch.static_cache_for(40) is None
    module = SteeredGenerationModule(
        ModelSpec(str(tiny_llama_dir)), compile=True, max_new_tokens=5, static_cache_multiple=16
    )
    assert module.static_cache_for(40) == 48 and module.static_cache_for(11) == 16
    module.use_batch_plan(BatchPlan(batch_size=2, rows=3, width=40, static_cache_length=48))
    assert module.static_cache_length == 48
    module.use_batch_plan(BatchPlan(batch_size=2, rows=3, width=11, static_cache_length=16))
    assert module.static_cache_length == 48 and module.batch_plan is not None and module.batch_plan.width == 11
    module.use_batch_plan(BatchPlan(batch_size=2, rows=3))
    assert module.static_cache_length == 48


def test_plan_is_frozen():
    plan = BatchPlan(batch_size=2, rows=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.batch_size = 4


class Stats:
    """A :class:`TrainingStatistics` of fixed values."""

    def input_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((4,), 2.0), torch.full((4,), 0.5)

    def target_moments(self, covariance: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.arange(4.0), torch.eye(4) if covariance else None


def test_l2s_module_reads_training_statistics_from_its_data_module():
    assert isinstance(Stats(), TrainingStatistics) and not isinstance(object(), TrainingStatistics)
    module = L2SModule(4, hidden=3, normalize_input=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    module.trainer = trainer
    trainer.datamodule = object()  # no statistics: nothing is initialised
    module.setup("fit")
    assert not torch.equal(module.mlp.net[-1].bias, torch.arange(4.0)) and not module._initialised
    trainer.datamodule = Stats()
    module.setup("validate")
    assert not module._initialised
    module.setup("fit")
    assert module._initialised and torch.equal(module.mlp.net[-1].bias, torch.arange(4.0))
    assert torch.equal(module.mlp.input_mean, torch.full((4,), 2.0))
    assert torch.equal(module.mlp.input_std, torch.full((4,), 0.5))
