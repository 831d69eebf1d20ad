"""`l2s extract`: P2S features of a dataset written to features.h5 (LightningCLI; resumable; DDP)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from l2s_lightning.data.datamodule import PromptDataModule, data_options, describe_data
from l2s_lightning.errors import L2SInputError
from l2s_lightning.extraction.module import ExtractionModule
from l2s_lightning.extraction.writer import HDF5FeatureWriter
from l2s_lightning.features import FORMAT_VERSION
from l2s_lightning.models.loading import is_image_text_config, load_config
from l2s_lightning.writer_cli import WriterCLI, make_cli


class ExtractCLI(WriterCLI):
    """``l2s extract``: ExtractionModule + PromptDataModule + the HDF5 writer (``--writer.output``)."""

    writer_class = HDF5FeatureWriter


def extraction_attrs(module: ExtractionModule, data: PromptDataModule) -> dict[str, Any]:
    """Attributes recorded in features.h5 (and compared when a run resumes)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": module.spec.display_name,
        "layer_steer": module.layer_steer,
        "layer_context": module.layer_context,
        "hidden_size": module.hidden_size,
        "num_layers": module.num_layers,
        "template_set": data.templates.name,
        "template_sha256": data.templates.fingerprint(),
        "dataset": describe_data(data),
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
    if data.use_images and any(r["image_path"] or r["key_phrase"] for r in rows):
        if not is_image_text_config(load_config(module.spec)):
            raise L2SInputError(
                f"model {module.spec.display_name} is text-only but the data has images: set data.use_images=false"
            )
    writer.attrs = extraction_attrs(module, data)
    writer.check_compatible(writer.attrs)
    data.exclude(writer.done_ids())
    return len(data.pending_rows())


def extract_main(argv: list[str] | None = None) -> int:
    """Entry point of ``l2s extract``."""
    cli = make_cli(ExtractCLI, ExtractionModule, PromptDataModule, argv)
    writer = cli.writer
    console = Console(stderr=True)
    total = len(cli.datamodule.rows())
    pending = preflight(cli.model, cli.datamodule, writer)
    if cli.trainer.is_global_zero:
        console.print(
            f"[bold]extract[/]: {total} samples, {total - pending} already in {writer.output}, {pending} to do"
        )
    if pending == 0:
        if writer.part_files() and cli.trainer.is_global_zero:  # one merge (torchrun / SLURM start every rank)
            writer.merge_and_clean()
        return 0
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    if cli.trainer.is_global_zero:
        console.print(f"[green]features written[/] to {writer.output}")
    return 0
