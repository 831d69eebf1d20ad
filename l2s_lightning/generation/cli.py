"""`l2s predict`: steered generation of a dataset split into JSONL (LightningCLI; resumable; DDP)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.errors import L2SInputError
from l2s_lightning.generation.module import SteeredGenerationModule
from l2s_lightning.generation.writer import JsonlPredictionWriter
from l2s_lightning.models.loading import ModelCache
from l2s_lightning.writer_cli import WriterCLI, make_cli


class PredictCLI(WriterCLI):
    """``l2s predict``: SteeredGenerationModule + PromptDataModule (test split) + the JSONL writer."""

    writer_class = JsonlPredictionWriter

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults({"data.splits": ["test"]})


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
    if module.method in ("mean_ba", "p2s_oracle"):
        hints = {
            "mean_ba": f"fit it on features made with template set {templates.name!r}",
            "p2s_oracle": "extract the test split too (data.splits=[train, test])",
        }
        try:
            module.steerer.check_inputs(behaviours=[r["behaviour"] for r in rows], sample_ids=[r["id"] for r in rows])
        except ValueError as err:
            raise L2SInputError(f"{err}; steerer {module.hparams.steerer}: {hints[module.method]}") from None


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
    check_rows(module, data, rows)
    writer.check_compatible(module.settings(data))
    data.exclude(writer.done_ids())
    pending = len(data.pending_rows())
    if trainer.is_global_zero:
        Console(stderr=True).print(
            f"[bold]predict[/] {module.method} α={module.alpha:g}: {len(rows)} samples, {len(rows) - pending} done, {pending} to do"
        )
    if pending == 0:
        if writer.part_files() and trainer.is_global_zero:  # one merge (torchrun / SLURM start every rank)
            writer.merge_and_clean()
        return 0
    if models is not None:
        module.loaded = models.get(module.spec)
        module.shared_model = True
    trainer.predict(module, datamodule=data, return_predictions=False)
    return pending


def predict_main(argv: list[str] | None = None, models: ModelCache | None = None) -> int:
    """Entry point of ``l2s predict``; ``models``: a cache shared by the runs of one process (``l2s run``, ``l2s sweep``)."""
    cli = make_cli(PredictCLI, SteeredGenerationModule, PromptDataModule, argv)
    run_prediction(cli.model, cli.datamodule, cli.writer, cli.trainer, models)
    return 0
