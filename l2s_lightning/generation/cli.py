"""`l2s predict`: steered generation on a dataset split (test by default) into JSONL. The steerer
(``--model.method``, ``--model.steerer``) adds α times its vector to the residual stream of layer L*; ``none``
and ``prompt`` are the unsteered references. Resumes a killed run; several devices share the work.

The command parses its arguments into a :class:`~l2s_lightning.stages.predict.PredictConfig` and runs
:func:`l2s_lightning.stages.predict.run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from l2s_lightning.data.datamodule import PromptDataModule
from l2s_lightning.generation.module import SteeredGenerationModule
from l2s_lightning.generation.writer import JsonlPredictionWriter
from l2s_lightning.models.loading import ModelCache
from l2s_lightning.stages import predict
from l2s_lightning.stages.predict import PredictConfig
from l2s_lightning.writer_cli import StageCLI, WriterCLI, load_stage_config, parse_stage_config


class PredictCLI(WriterCLI[PredictConfig]):
    """``l2s predict``: SteeredGenerationModule + PromptDataModule (test split) + the JSONL writer."""

    command = "l2s predict"
    group_titles = StageCLI.group_titles | {
        "model": "steering and generation",
        "data": "the prompts (the test split by default)",
        "writer": "the predictions file",
    }
    config_class = PredictConfig
    module_class = SteeredGenerationModule
    data_class = PromptDataModule
    writer_class = JsonlPredictionWriter

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults({"data.splits": ["test"]})


def load_config(
    path: str | Path, overrides: Mapping[str, Any] | None = None, args: Sequence[str] = ()
) -> PredictConfig:
    """The :class:`PredictConfig` of a predict YAML (``configs/predict/*.yaml``), ``args`` / dotted ``overrides``
    applied as ``l2s predict`` applies its command line."""
    return load_stage_config(PredictCLI, path, overrides, args)


def predict_main(argv: list[str] | None = None, models: ModelCache | None = None) -> int:
    """Entry point of ``l2s predict``; ``models``: a cache shared by the runs of one process."""
    predict.run(parse_stage_config(PredictCLI, argv), models=models)
    return 0
