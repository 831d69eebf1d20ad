"""The extract stage: P2S features (h, z) of a dataset into features.h5 (resumable; DDP through the Trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from l2s_lightning.config import fields_dict
from l2s_lightning.data.datamodule import PromptDataModule, data_options, describe_data
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.extraction.writer import HDF5FeatureWriter
from l2s_lightning.features import FORMAT_VERSION
from l2s_lightning.models.loading import ModelSpec, is_image_text_config, load_config
from l2s_lightning.stages.checks import CHAT_MARGIN, check_question_lengths
from l2s_lightning.stages.common import (
    WRITER_TRAINER_DEFAULTS,
    PromptDataSettings,
    seed_run,
    sigterm_as_terminated,
    writer_trainer,
)


@dataclass
class ExtractionSettings:
    """The arguments of :class:`~l2s_lightning.extraction.module.ExtractionModule` (kept equal by a test)."""

    model: ModelSpec
    layer_steer: int
    layer_context: int
    forward: Literal["prefix_shared", "reference"] = "prefix_shared"
    z_readout: Literal["last", "mean"] = "last"
    compile: bool = False


@dataclass
class FeatureWriterSettings:
    """The arguments of :class:`~l2s_lightning.extraction.writer.HDF5FeatureWriter` (kept equal by a test)."""

    output: str = "outputs/features.h5"
    async_write: bool | None = None
    max_pending: int = 2


@dataclass
class ExtractConfig:
    """What ``l2s extract`` does: the module, the data, the writer, Trainer arguments and the seed (the keys of
    ``configs/extract/*.yaml``; ``l2s_lightning.extraction.cli.load_config`` reads one)."""

    model: ExtractionSettings
    data: PromptDataSettings
    writer: FeatureWriterSettings = field(default_factory=FeatureWriterSettings)
    trainer: dict[str, Any] = field(default_factory=lambda: dict(WRITER_TRAINER_DEFAULTS))
    seed_everything: int | bool = True


def extraction_attrs(module: ExtractionModule, data: PromptDataModule) -> dict[str, Any]:
    """Attributes recorded in features.h5 (and compared when a run resumes)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": module.spec.display_name,
        "layer_steer": module.layer_steer,
        "layer_context": module.layer_context,
        "z_readout": module.z_readout,
        "hidden_size": module.hidden_size,
        "num_layers": module.num_layers,
        "template_set": data.templates.name,
        "template_sha256": data.templates.fingerprint(),
        "dataset": describe_data(data),
        "data_sha256": data.source_sha256,
        "data_options": data_options(data),
        "split_seed": data.split_seed,
        "test_fraction": data.test_fraction,
        "split_file": str(data.split_file),
    }


def preflight(module: ExtractionModule, data: PromptDataModule, writer: HDF5FeatureWriter) -> int:
    """Every check that can fail before the model loads; returns the number of rows still to extract.

    ``data.rows()`` reads the source, resolves every row's templates (refusing a missing template or an
    empty completion), checks images and refuses empty data or rows mixing with and without images.
    """
    rows = data.rows()
    check_question_lengths(data, module.spec, new_tokens=CHAT_MARGIN)  # the completion and template suffix
    if data.use_images and any(r["image_path"] or r["key_phrase"] for r in rows):
        if not is_image_text_config(load_config(module.spec)):
            raise L2SInputError(
                f"model {module.spec.display_name} is text-only but the data has images: set data.use_images=false"
            )
    writer.attrs = extraction_attrs(module, data)
    writer.check_compatible(writer.attrs)
    data.exclude(writer.done_ids())
    return len(data.pending_rows())


def run(cfg: ExtractConfig) -> Path:
    """Extract the rows ``cfg.writer.output`` does not hold yet (all checks first); returns that file."""
    seed_run(cfg.seed_everything)
    module = ExtractionModule(**fields_dict(cfg.model))
    data = PromptDataModule(**fields_dict(cfg.data))
    writer = HDF5FeatureWriter(**fields_dict(cfg.writer))
    trainer = writer_trainer(cfg.trainer, writer)
    console = Console(stderr=True)
    total = len(data.rows())
    with writer.locked(trainer.global_rank):  # from the finished-ids check to the merge: one run per output
        pending = preflight(module, data, writer)
        if trainer.is_global_zero:
            console.print(
                f"[bold]extract[/]: {total} samples, {total - pending} already in {writer.output}, {pending} to do"
            )
        if pending == 0:
            if writer.part_files() and trainer.is_global_zero:  # one merge (torchrun / SLURM start every rank)
                writer.merge_and_clean()
            return writer.output
        kept = f"extract stopped by SIGTERM; the batches done are kept in {writer.parts_dir}: run it again to resume"
        with sigterm_as_terminated(kept):
            trainer.predict(module, datamodule=data, return_predictions=False)
    if trainer.is_global_zero:
        console.print(f"[green]features written[/] to {writer.output}")
    return writer.output
