"""The predict stage: steered generation of a dataset split into JSONL (resumable; DDP through the Trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from l2s_lightning.config import fields_dict
from l2s_lightning.data.datamodule import PromptDataModule, data_options
from l2s_lightning.errors import L2SInputError
from l2s_lightning.generation.module import SteeredGenerationModule
from l2s_lightning.generation.writer import JsonlPredictionWriter
from l2s_lightning.methods import MethodName
from l2s_lightning.models.loading import ModelCache, ModelSpec
from l2s_lightning.stages.checks import check_question_lengths
from l2s_lightning.stages.common import (
    WRITER_TRAINER_DEFAULTS,
    PromptDataSettings,
    seed_run,
    sigterm_as_terminated,
    writer_trainer,
)


@dataclass
class GenerationSettings:
    """The arguments of :class:`~l2s_lightning.generation.module.SteeredGenerationModule` (kept equal by a test)."""

    model: ModelSpec
    method: MethodName = "none"
    steerer: str | None = None
    alpha: float | None = None
    positions: Literal["generated", "last_prompt_and_generated", "all"] = "generated"
    steer_tokens: int | None = None
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    cache_implementation: Literal["dynamic", "static"] = "dynamic"
    compile: bool = False
    static_cache_multiple: int = 64
    static_cache_for_longest: bool = True
    compile_backend: str = "inductor"
    allow_other_model: bool = False
    answer_nll: bool = True


@dataclass
class PredictionWriterSettings:
    """The arguments of :class:`~l2s_lightning.generation.writer.JsonlPredictionWriter` (kept equal by a test)."""

    output: str = "outputs/predictions.jsonl"


@dataclass
class PredictConfig:
    """What ``l2s predict`` does: the module, the data (the test split unless ``data.splits`` names others), the
    writer, Trainer arguments and the seed (the keys of ``configs/predict/*.yaml``;
    ``l2s_lightning.generation.cli.load_config`` reads one)."""

    model: GenerationSettings
    data: PromptDataSettings
    writer: PredictionWriterSettings = field(default_factory=PredictionWriterSettings)
    trainer: dict[str, Any] = field(default_factory=lambda: dict(WRITER_TRAINER_DEFAULTS))
    seed_everything: int | bool = True


def check_rows(module: SteeredGenerationModule, data: PromptDataModule, rows: list[dict[str, Any]]) -> None:
    """Before any generation: every row has what the method needs (an instruction for ``prompt``, a known
    behaviour for ``mean_ba``, a known sample id for ``p2s_oracle``)."""
    templates = data.templates
    if module.method == "prompt" and not templates.prompt_baseline:
        missing = sorted({r["behaviour"] for r in rows if not r["instruction"]})
        if missing:
            raise L2SInputError(
                f"method=prompt: template set {templates.name!r} ({templates.source}) has no prompt_baseline and "
                f"behaviour(s) {missing} have no instruction, so the prompt baseline would equal `none`: add a "
                "prompt_baseline or an instruction to each behaviour"
            )
    steerer = module.steerer
    if steerer is not None and (steerer.needs_behaviours or steerer.needs_sample_ids):
        hint = (
            f"fit it on features made with template set {templates.name!r}"
            if steerer.needs_behaviours
            else "extract the test split too (data.splits=[train, test])"
        )
        try:
            steerer.check_inputs(behaviours=[r["behaviour"] for r in rows], sample_ids=[r["id"] for r in rows])
        except ValueError as err:
            raise L2SInputError(f"{err}; steerer {module.hparams['steerer']}: {hint}") from None


def run_prediction(
    module: SteeredGenerationModule,
    data: PromptDataModule,
    writer: JsonlPredictionWriter,
    trainer,
    models: ModelCache | None = None,
) -> int:
    """Check everything, skip finished ids, generate the rest (with the model kept in ``models``, when given);
    returns the number of rows generated."""
    rows = data.rows()
    check_question_lengths(data, module.spec, new_tokens=module.generation_kwargs["max_new_tokens"])
    check_rows(module, data, rows)
    writer.check_compatible(module.settings(data_options(data)))
    data.exclude(writer.done_ids())
    pending = len(data.pending_rows())
    if trainer.is_global_zero:
        Console(stderr=True).print(
            f"[bold]predict[/] {module.method} α={module.alpha:g}: {len(rows)} samples, "
            f"{len(rows) - pending} done, {pending} to do"
        )
    if pending == 0:
        if writer.part_files() and trainer.is_global_zero:  # one merge (torchrun / SLURM start every rank)
            writer.merge_and_clean()
        return 0
    if models is not None:
        module.loaded = models.get(module.spec)
        module.shared_model = True
    kept = f"predict stopped by SIGTERM; the batches done are kept in {writer.parts_dir}: run it again to resume"
    with sigterm_as_terminated(kept):
        trainer.predict(module, datamodule=data, return_predictions=False)
    return pending


def run(cfg: PredictConfig, *, models: ModelCache | None = None) -> Path:
    """Generate the rows ``cfg.writer.output`` does not hold yet (all checks first), with the model kept in
    ``models`` when given (a cache shared by the runs of one process: ``l2s run``, ``l2s sweep``); returns that
    file."""
    seed_run(cfg.seed_everything)
    module = SteeredGenerationModule(**fields_dict(cfg.model))
    data = PromptDataModule(**(fields_dict(cfg.data) | {"splits": cfg.data.splits or ["test"]}))
    writer = JsonlPredictionWriter(**fields_dict(cfg.writer))
    trainer = writer_trainer(cfg.trainer, writer)
    with writer.locked(trainer.global_rank):  # from the finished-ids check to the merge: one run per output
        run_prediction(module, data, writer, trainer, models)
    return writer.output
